// Package node is the node agent: it watches its own Node, applies the
// rendered config atomically, drives OSTree, reboots and reports.
package node
