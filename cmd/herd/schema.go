package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"herd.dev/herd/schema"
)

func newSchemaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schema",
		Short: "Work with the fleet schema (herd.dev/schema)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "vendor [DIR]",
		Short: "Write herd's schema into DIR/" + schema.VendorDir + " so `cue vet` can check the fleet",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			if _, err := os.Stat(filepath.Join(dir, "cue.mod", "module.cue")); err != nil {
				return failure(fmt.Errorf("%s is not a CUE module (no cue.mod/module.cue); create one with `cue mod init`", dir))
			}
			vendor := filepath.Join(dir, filepath.FromSlash(schema.VendorDir))
			if err := os.RemoveAll(vendor); err != nil {
				return failure(err)
			}
			if err := os.MkdirAll(vendor, 0o755); err != nil {
				return failure(err)
			}
			for name, src := range schema.Files() {
				if err := os.WriteFile(filepath.Join(vendor, name), src, 0o644); err != nil {
					return failure(err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", vendor)
			return nil
		},
	})
	return cmd
}
