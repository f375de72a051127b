// Package cgroups names the cgroups the node monitor counts by: which
// hierarchy to use, cgroup ids to paths, and paths to pods and containers.
package cgroups
