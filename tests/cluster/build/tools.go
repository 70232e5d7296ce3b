//go:build tools

// Package build records the upstream commands built by tests/cluster/build.sh
// so that `go mod tidy` keeps them (and everything they need) in go.mod/go.sum.
package build

import (
	_ "go.etcd.io/etcd/server/v3" // the etcd server command (etcd builds its binary from this package)
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
