// A tiny in-cluster API client for test_kubelet_node.py, built static into the
// image localhost/sigma0/kubeclient:1 by tests/cluster/build-node.sh. Standard
// library only.
module sigma0.dev/tests/cluster/kubeclient

go 1.26
