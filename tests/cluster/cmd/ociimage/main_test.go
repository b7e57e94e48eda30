package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// readArchive returns the archive's index, its one image's config, and the
// layer's entries (name -> content; directories and links as "dir" and
// "-> target").
func readArchive(t *testing.T, path string) (map[string]any, map[string]any, map[string]string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	blob := func(digest string) []byte {
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
		if !ok {
			t.Fatalf("no blob %s in the archive", digest)
		}
		return b
	}
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	var manifest struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v, %d layers", err, len(manifest.Layers))
	}
	var config map[string]any
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	entries := map[string]string{}
	lr := tar.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d time %v, want root and the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			entries[h.Name] = "dir"
		case tar.TypeSymlink:
			entries[h.Name] = "-> " + h.Linkname
		default:
			b, _ := io.ReadAll(lr)
			entries[h.Name] = string(b)
		}
	}
	return map[string]any{"name": index.Manifests[0].Annotations["io.containerd.image.name"], "digest": index.Manifests[0].Digest}, config, entries
}

func TestTheDockerfilesFinalStageIsTheBinaryAndTheCABundleAsUser65532(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "drainscaler")
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(bin, []byte("static binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, []byte("CA bundle"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := fromDockerfile(filepath.Join("..", "..", "..", "..", "Dockerfile"), list{
		"build:/drainscaler=" + bin,
		"build:/etc/ssl/certs/ca-certificates.crt=" + ca,
	})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	digest, err := write(out, "docker.io/drainscaler/drainscaler:dev", img)
	if err != nil {
		t.Fatal(err)
	}
	index, config, entries := readArchive(t, out)
	if index["name"] != "docker.io/drainscaler/drainscaler:dev" || index["digest"] != digest {
		t.Errorf("index %v, want the name and digest %s", index, digest)
	}
	want := map[string]string{
		"drainscaler":                       "static binary",
		"etc/":                              "dir",
		"etc/ssl/":                          "dir",
		"etc/ssl/certs/":                    "dir",
		"etc/ssl/certs/ca-certificates.crt": "CA bundle",
	}
	if !reflect.DeepEqual(entries, want) {
		t.Errorf("layer holds %v, want exactly %v", keys(entries), keys(want))
	}
	c := config["config"].(map[string]any)
	wantConfig := map[string]any{
		"User":         "65532:65532",
		"ExposedPorts": map[string]any{"8080/tcp": map[string]any{}},
		"Entrypoint":   []any{"/drainscaler"},
		"Cmd":          []any{"run"},
	}
	if !reflect.DeepEqual(c, wantConfig) {
		t.Errorf("config %v, want %v", c, wantConfig)
	}
	if config["os"] != "linux" || config["architecture"] != "amd64" {
		t.Errorf("platform %v/%v, want linux/amd64", config["os"], config["architecture"])
	}

	// The same inputs give the same image: that is what lets scripts/cluster
	// skip an import containerd already has.
	again, err := write(filepath.Join(dir, "again.tar"), "docker.io/drainscaler/drainscaler:dev", img)
	if err != nil || again != digest {
		t.Errorf("second build: %s, %v; want the same digest %s", again, err, digest)
	}
}

func TestAFinalStageItCannotBuildFaithfullyIsAnError(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		dockerfile string
		stage      list
		want       string
	}{
		"RUN":            {"FROM alpine AS build\nFROM scratch\nCOPY --from=build /app /app\nRUN true\n", list{"build:/app=" + bin}, "RUN is not supported"},
		"base image":     {"FROM alpine\nCOPY app /app\n", nil, "only FROM scratch"},
		"missing file":   {"FROM alpine AS build\nFROM scratch\nCOPY --from=build /app /app\n", nil, "-stage-file build:/app=HOSTFILE"},
		"unused file":    {"FROM alpine AS build\nFROM scratch\nCOPY --from=build /app /app\n", list{"build:/app=" + bin, "build:/other=" + bin}, "copies no such file"},
		"shell-form CMD": {"FROM scratch\nCMD run\n", nil, "JSON (exec) form"},
		"COPY --chown":   {"FROM alpine AS build\nFROM scratch\nCOPY --chown=1:1 --from=build /app /app\n", list{"build:/app=" + bin}, "--chown=1:1 is not supported"},
	} {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "Dockerfile")
			if err := os.WriteFile(f, []byte(c.dockerfile), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := fromDockerfile(f, c.stage)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one that says %q", err, c.want)
			}
		})
	}
}

func keys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}
