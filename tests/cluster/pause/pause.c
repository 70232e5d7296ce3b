/* The pod sandbox's pause process, ours (the test node imports it, never pulls
 * registry.k8s.io/pause): PID 1 of the pod, it holds the pod's namespaces,
 * reaps every child handed to it, and exits 0 on SIGTERM or SIGINT.
 * Built static by tests/cluster/build-node.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop};
  struct sigaction chld = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGTERM, &term, NULL) < 0 || sigaction(SIGINT, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &chld, NULL) < 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
