// Package node is the node agent: it watches its own Node, applies the
// rendered config atomically, drives OSTree, reboots and reports.
//
// The decisions are package fsm's: a pure state machine from the journal,
// the Node, the OS and the render to the next action. This package is its
// executor: it reads the Node, the sysroot and the render, writes files and
// sysctls, pulls and deploys, restarts services, reboots and patches the
// Node, and hands each result back.
//
// Besides the desired state it acts on two requests: it pulls the OS commit
// the herd.dev/prestage-os annotation names ahead of the node's rollout,
// without disruption, and reports herd.dev/os-pulled; and it removes the
// herd.dev/converging taint a joining node registers with once the node is
// Idle at its target.
package node
