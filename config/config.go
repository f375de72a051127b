// Package config holds the Kubernetes manifests Herd installs (CRDs, RBAC,
// controller, agent), assembled with kustomize and built into the binary.
package config

import (
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// VerifyArg is the controller's argument that turns commit signature
// verification on, with the keys of the ConfigMap herd-trusted-keys; Install
// adds it unless Options.InsecureSkipVerify.
const VerifyArg = "--verify-dir=/etc/herd/trusted-keys"

//go:embed kustomization.yaml */*.yaml
var manifests embed.FS

// Render assembles the base manifests with kustomize and returns them as
// one YAML stream: the CRDs, RBAC, admission policy and workloads, with
// placeholder images and no fleet repo. Install renders what `herd
// install` applies.
func Render() ([]byte, error) {
	mem, err := load()
	if err != nil {
		return nil, err
	}
	return build(mem, "/config")
}

// Options are `herd install`'s settings.
type Options struct {
	// Image is the controller's image repository; the agent's is Image
	// with "-agent" appended, unless AgentImage is set.
	Image      string
	AgentImage string
	Version    string // the images' tag
	// The fleet source: the controller's --repo, --branch, --path,
	// --cluster and --interval.
	Repo     string
	Branch   string
	Path     string
	Cluster  string
	Interval time.Duration
	// WebhookSecret, when set, is stored in the Secret herd-webhook
	// (key "secret"): the forges' HMAC key and GitLab's token.
	WebhookSecret string
	// Git, when set, is stored in the Secret herd-git in Flux's format
	// (keys username, password, bearerToken, identity, known_hosts).
	Git map[string][]byte
	// ExtraArgs are appended to the controller's arguments.
	ExtraArgs []string
	// TrustedKeys, when set, are stored in the ConfigMap herd-trusted-keys,
	// which the controller reads at every check (file name → content:
	// *.asc and *.gpg keyrings, allowed_signers).
	TrustedKeys map[string][]byte
	// OSTrust, when set, is stored in the ConfigMap herd-os-trust, the
	// agents' list of OSTree remotes and keys (remotes.yaml and the key
	// files it names).
	OSTrust map[string][]byte
	// Shards, when set, install one controller per shard instead of one
	// for the whole fleet (herd controller --shard-selector).
	Shards []Shard
	// InsecureSkipVerify installs a controller that accepts fleet commits
	// without checking their signatures (--insecure-skip-verify); otherwise
	// it trusts the keys of the ConfigMap herd-trusted-keys (VerifyArg).
	InsecureSkipVerify bool
}

// DefaultImage is where released images live.
const DefaultImage = "ghcr.io/herd-dev/herd"

// Namespace is where Herd runs.
const Namespace = "herd-system"

// Install renders the manifests for a cluster: the base with the images
// set, the controller following opts' repository, and the Secrets given.
func Install(opts Options) ([]byte, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	mem, err := load()
	if err != nil {
		return nil, err
	}
	k, err := opts.overlay()
	if err != nil {
		return nil, err
	}
	if err := mem.WriteFile("/install/kustomization.yaml", k); err != nil {
		return nil, err
	}
	out, err := build(mem, "/install")
	if err != nil {
		return nil, err
	}
	if len(opts.Shards) > 0 {
		if out, err = shardControllers(out, opts.Shards); err != nil {
			return nil, err
		}
	}
	return append(out, opts.secrets()...), nil
}

// NoController reports whether the options install no controller: neither
// a repo nor a cluster name is given.
func (o *Options) NoController() bool { return o.Repo == "" && o.Cluster == "" }

func (o *Options) check() error {
	if o.Repo == "" && !o.NoController() {
		return errors.New("the fleet repo URL is required with the cluster name")
	}
	if u, err := url.Parse(o.Repo); err == nil && u.User != nil {
		if _, hasPassword := u.User.Password(); hasPassword || u.Scheme == "http" || u.Scheme == "https" {
			return fmt.Errorf("the repo URL %s carries credentials, which would be readable in the Deployment: give them as a Git secret", u.Redacted())
		}
	}
	if o.Cluster == "" && !o.NoController() {
		return errors.New("the cluster name is required with the repo: it names this cluster's directory on the status branch")
	}
	if o.Version == "" {
		return errors.New("the image version is required")
	}
	if len(o.Shards) > 0 && o.NoController() {
		return errors.New("shards need the fleet repo and the cluster name")
	}
	seen := map[string]bool{}
	for _, s := range o.Shards {
		if s.Selector == "" || seen[s.Name] {
			return fmt.Errorf("shard %q: each shard needs a name of its own and a selector (--shard NAME=SELECTOR)", s.Name)
		}
		seen[s.Name] = true
	}
	if o.Image == "" {
		o.Image = DefaultImage
	}
	if o.AgentImage == "" {
		o.AgentImage = o.Image + "-agent"
	}
	return nil
}

// overlay is the kustomization that turns the base into an install.
func (o *Options) overlay() ([]byte, error) {
	args := []string{"--repo=" + o.Repo, "--cluster=" + o.Cluster}
	if o.Branch != "" {
		args = append(args, "--branch="+o.Branch)
	}
	if o.Path != "" {
		args = append(args, "--path="+o.Path)
	}
	if o.Interval > 0 {
		args = append(args, "--interval="+o.Interval.String())
	}
	if o.InsecureSkipVerify {
		args = append(args, "--insecure-skip-verify")
	} else {
		args = append(args, VerifyArg)
	}
	args = append(args, o.ExtraArgs...)
	var ops []map[string]any
	for _, a := range args {
		ops = append(ops, map[string]any{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": a})
	}
	patch, err := yaml.Marshal(ops)
	if err != nil {
		return nil, err
	}
	patches := []map[string]any{{
		"target": map[string]string{"kind": "Deployment", "name": "herd-controller"},
		"patch":  string(patch),
	}}
	if o.NoController() {
		// Without a repo there is nothing for a controller to follow: the
		// CRDs, RBAC and the agent only.
		patches = nil
		for kind, names := range map[string][]string{"Deployment": {"herd-controller"}, "Service": {"herd-webhook", "herd-controller-metrics"}, "PodDisruptionBudget": {"herd-controller"}} {
			for _, name := range names {
				del := fmt.Sprintf("$patch: delete\napiVersion: v1\nkind: %s\nmetadata: {name: %s, namespace: %s}\n", kind, name, Namespace)
				if kind == "Deployment" {
					del = strings.Replace(del, "apiVersion: v1", "apiVersion: apps/v1", 1)
				}
				if kind == "PodDisruptionBudget" {
					del = strings.Replace(del, "apiVersion: v1", "apiVersion: policy/v1", 1)
				}
				patches = append(patches, map[string]any{"patch": del})
			}
		}
	}
	k := map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1",
		"kind":       "Kustomization",
		"resources":  []string{"../config"},
		"images": []map[string]string{
			{"name": "herd", "newName": o.Image, "newTag": o.Version},
			{"name": "herd-agent", "newName": o.AgentImage, "newTag": o.Version},
		},
		"labels":  []map[string]any{{"pairs": map[string]string{"app.kubernetes.io/version": o.Version}, "includeSelectors": false}},
		"patches": patches,
	}
	return yaml.Marshal(k)
}

// secrets renders the Secrets and ConfigMaps the options carry, as YAML
// documents.
func (o *Options) secrets() []byte {
	var out []byte
	add := func(kind, name, component string, data map[string][]byte) {
		if len(data) == 0 {
			return
		}
		obj := map[string]any{
			"apiVersion": "v1",
			"kind":       kind,
			"metadata": map[string]any{"name": name, "namespace": Namespace,
				"labels": map[string]string{"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": component}},
		}
		if kind == "Secret" {
			obj["type"] = "Opaque"
			obj["data"] = encode(data)
		} else {
			text, binary := configMapData(data)
			if len(text) > 0 {
				obj["data"] = text
			}
			if len(binary) > 0 {
				obj["binaryData"] = binary
			}
		}
		b, _ := yaml.Marshal(obj)
		out = append(append(out, "---\n"...), b...)
	}
	if o.WebhookSecret != "" {
		add("Secret", "herd-webhook", "controller", map[string][]byte{"secret": []byte(o.WebhookSecret)})
	}
	add("Secret", "herd-git", "controller", o.Git)
	add("ConfigMap", "herd-trusted-keys", "controller", o.TrustedKeys)
	add("ConfigMap", "herd-os-trust", "agent", o.OSTrust)
	return out
}

// encode is a Secret's data: every value in base64.
func encode(data map[string][]byte) map[string]string {
	enc := map[string]string{}
	for k, v := range data {
		enc[k] = base64.StdEncoding.EncodeToString(v)
	}
	return enc
}

// configMapData splits files into a ConfigMap's data (UTF-8 text, such as
// armored keys) and binaryData (the rest, such as *.gpg keyrings).
func configMapData(files map[string][]byte) (text, binary map[string]string) {
	text, bin := map[string]string{}, map[string][]byte{}
	for k, v := range files {
		if utf8.Valid(v) {
			text[k] = string(v)
		} else {
			bin[k] = v
		}
	}
	return text, encode(bin)
}

// load copies the embedded manifests into an in-memory file system.
func load() (filesys.FileSystem, error) {
	mem := filesys.MakeFsInMemory()
	err := fs.WalkDir(manifests, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := manifests.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(path.Join("/config", p), b)
	})
	if err != nil {
		return nil, fmt.Errorf("load manifests: %w", err)
	}
	return mem, nil
}

func build(mem filesys.FileSystem, dir string) ([]byte, error) {
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize manifests: %w", err)
	}
	out, err := res.AsYaml()
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(string(out), "\n") {
		out = append(out, '\n')
	}
	return out, nil
}
