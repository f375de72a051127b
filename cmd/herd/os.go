package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"herd.dev/herd/os/image"
)

func newOSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "os",
		Short: "Build, sign and compare OSTree OS images",
	}
	cmd.AddCommand(newOSBuildCmd(), newOSDiffCmd())
	return cmd
}

func newOSBuildCmd() *cobra.Command {
	var (
		o         image.Options
		buildArgs []string
		timestamp string
	)
	cmd := &cobra.Command{
		Use:   "build -f Buildfile --repo REPO --ref REF",
		Short: "Build an OS image from a Buildfile and commit it to an OSTree repository",
		Long: `Build reads a Buildfile (Dockerfile syntax; instructions FROM, ARG, COPY,
ADD, RUN, LABEL and IMAGE, see docs/os.md), builds the image layer on layer
over the FROM commit and commits it on REF in REPO (an archive-mode
repository, created when missing, that nodes pull from over HTTP). RUN
steps run in the image's root file system in a bubblewrap sandbox without
network. The same Buildfile, context and arguments give the same commit.

With --sign the commit and the repository summary are GPG-signed. A static
delta is generated from REF's previous commit (unless --no-delta) and from
every --delta-from commit, so nodes on those commits pull only the
difference. It prints the new commit on standard output, progress on
standard error. It runs as root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Buildfile == "" || o.Repo == "" || o.Ref == "" {
				return usageError("-f, --repo and --ref are required")
			}
			o.BuildArgs = map[string]string{}
			for _, a := range buildArgs {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return usageError("--build-arg %q: want NAME=VALUE", a)
				}
				o.BuildArgs[k] = v
			}
			ts, err := buildTimestamp(timestamp)
			if err != nil {
				return usageError("%v", err)
			}
			o.Timestamp = ts
			o.Log = cmd.ErrOrStderr()
			res, err := image.Build(cmd.Context(), o)
			if err != nil {
				return failure(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Commit)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Buildfile, "file", "f", "", "the Buildfile")
	f.StringVar(&o.Context, "context", "", "build context directory (default: the Buildfile's directory)")
	f.StringVar(&o.Repo, "repo", "", "OSTree repository to commit to (created in archive mode when missing)")
	f.StringVar(&o.Ref, "ref", "", "branch to commit the image on, e.g. containeros/x86_64/stable")
	f.StringArrayVar(&buildArgs, "build-arg", nil, "NAME=VALUE for an ARG of the Buildfile (repeatable)")
	f.StringVar(&o.SignKey, "sign", "", "GPG key ID or fingerprint to sign the commit and the summary with")
	f.StringVar(&o.GPGHome, "gpg-homedir", "", "GPG home directory holding the signing key (default: gpg's)")
	f.StringArrayVar(&o.DeltaFrom, "delta-from", nil, "also generate a static delta from this commit or ref, e.g. one pools run today (repeatable)")
	f.BoolVar(&o.NoDelta, "no-delta", false, "generate no static delta from the ref's previous commit")
	f.StringVar(&timestamp, "timestamp", "", "commit timestamp (RFC 3339); default $SOURCE_DATE_EPOCH, else the base commit's")
	return cmd
}

// buildTimestamp is --timestamp, else $SOURCE_DATE_EPOCH, else zero (the
// base commit's).
func buildTimestamp(flag string) (time.Time, error) {
	if flag != "" {
		t, err := time.Parse(time.RFC3339, flag)
		if err != nil {
			return time.Time{}, fmt.Errorf("--timestamp: %w", err)
		}
		return t, nil
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		return time.Unix(n, 0), nil
	}
	return time.Time{}, nil
}

func newOSDiffCmd() *cobra.Command {
	var repo, output string
	cmd := &cobra.Command{
		Use:   "diff A B --repo REPO",
		Short: "Show what changed between two OS commits",
		Long: `Diff lists the files added, removed and modified from OS commit (or ref) A
to B, with their sizes, and how the image metadata changed: version,
base commit, Buildfile digest and labels. REPO is a local repository or
an http(s) URL (the two commits are pulled into a temporary repository).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if repo == "" {
				return usageError("--repo is required")
			}
			if output != "text" && output != "json" {
				return usageError("--output %q: want text or json", output)
			}
			cache, err := os.MkdirTemp("", "herd-os-diff-")
			if err != nil {
				return failure(err)
			}
			defer os.RemoveAll(cache)
			r, commits, err := image.OpenRepo(cmd.Context(), repo, cache, args[0], args[1])
			if err != nil {
				return failure(err)
			}
			d, err := image.Compare(cmd.Context(), r, commits[0], commits[1])
			if err != nil {
				return failure(err)
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			}
			return d.WriteText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "OSTree repository: a path or an http(s) URL")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
