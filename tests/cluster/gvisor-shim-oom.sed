# gVisor's containerd shim raises its own OOM score to -999 when it starts and
# fails the whole start if it may not; these VMs withhold CAP_SYS_RESOURCE, so
# that write gets EPERM. Keep the shim's default score then, as containerd's own
# runc shim does with restrict_oom_score_adj. Applied by build-node.sh to
# gvisor.dev/gvisor/pkg/shim/v1/manager.go, which must match exactly once.
s/if err := sys\.SetOOMScore(cmd\.Process\.Pid, oomScoreMax); err != nil {/if err := sys.SetOOMScore(cmd.Process.Pid, oomScoreMax); err != nil \&\& !os.IsPermission(err) {/
