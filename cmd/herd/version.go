package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"herd.dev/herd/schema"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// herdVersion is the release this binary is: the -ldflags version, else
// the module version it was installed at (go install ...@v1.2.3), else "dev".
func herdVersion() string {
	if version != "dev" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return version
}

// versionInfo is what `herd version -o json|yaml` prints.
type versionInfo struct {
	Version       string `json:"version"`
	RenderVersion int    `json:"renderVersion"`
	GoVersion     string `json:"goVersion"`
	Platform      string `json:"platform"`
}

func newVersionCmd() *cobra.Command {
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print herd's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := versionInfo{Version: herdVersion(), RenderVersion: schema.RenderVersion, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
			if out.structured() {
				return out.write(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "herd %s (render version %d)\n", v.Version, v.RenderVersion)
			return nil
		},
	}
	out.bind(cmd, "text")
	return cmd
}
