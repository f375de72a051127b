// Package node is the node agent: it watches its own Node, applies the
// rendered config atomically, drives OSTree, reboots and reports.
//
// Besides the desired state it acts on two requests: it pulls the OS commit
// the herd.dev/prestage-os annotation names ahead of the node's rollout,
// without disruption, and reports herd.dev/os-pulled; and it removes the
// herd.dev/converging taint a joining node registers with once the node is
// Idle at its target.
package node
