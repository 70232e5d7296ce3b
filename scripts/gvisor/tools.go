//go:build tools

// Package gvisor records the upstream gVisor commands built by scripts/build-gvisor.sh
// so that `go mod tidy` keeps them (and everything they need) in go.mod/go.sum.
package gvisor

import (
	_ "gvisor.dev/gvisor/runsc" // the runsc OCI runtime
	_ "gvisor.dev/gvisor/shim"  // containerd-shim-runsc-v1, containerd's runtime shim for runsc
)
