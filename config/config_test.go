package config

import (
	"bytes"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The trust files given to Install become ConfigMaps the controller and
// agent mount: text keys as data, binary keyrings as binaryData.
func TestInstallTrustConfigMaps(t *testing.T) {
	armored := "-----BEGIN PGP PUBLIC KEY BLOCK-----\n...\n"
	binary := []byte{0x99, 0x01, 0xff, 0x00}
	out, err := Install(Options{
		Repo: "https://git.example.com/fleet.git", Cluster: "c", Version: "v1",
		TrustedKeys: map[string][]byte{"fleet.asc": []byte(armored), "old.gpg": binary},
		OSTrust:     map[string][]byte{"remotes.yaml": []byte("remotes: []\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	maps := configMaps(out)
	keys := maps["herd-trusted-keys"]
	if keys.Namespace != Namespace || keys.Data["fleet.asc"] != armored || !bytes.Equal(keys.BinaryData["old.gpg"], binary) {
		t.Errorf("herd-trusted-keys: %+v", keys)
	}
	if maps["herd-os-trust"].Data["remotes.yaml"] != "remotes: []\n" {
		t.Errorf("herd-os-trust: %+v", maps["herd-os-trust"])
	}
	out, err = Install(Options{Repo: "https://git.example.com/fleet.git", Cluster: "c", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	for name := range configMaps(out) {
		t.Errorf("ConfigMap %s rendered without trust files: a later install would replace the operator's", name)
	}
}

func configMaps(manifests []byte) map[string]corev1.ConfigMap {
	maps := map[string]corev1.ConfigMap{}
	for _, doc := range bytes.Split(manifests, []byte("\n---\n")) {
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal(doc, &cm); err == nil && cm.Kind == "ConfigMap" {
			maps[cm.Name] = cm
		}
	}
	return maps
}
