// Command ociimage writes an OCI image archive (an image layout as a tar, as
// `ctr images import` reads it) with one layer, without a container engine or
// a registry. The archive is a function of its inputs only: fixed file times
// and owners, sorted entries, no creation date. So the same inputs give the
// same image digest, which is how scripts/cluster skips importing an image
// containerd already has. It prints the manifest digest.
//
// From the final stage of a Dockerfile (FROM scratch; COPY, USER, EXPOSE, ENV,
// WORKDIR, ENTRYPOINT, CMD; anything else is an error), with the files the
// stage copies from earlier stages given as already built:
//
//	ociimage -out drainscaler.tar -name docker.io/drainscaler/drainscaler:dev \
//	    -dockerfile Dockerfile -stage-file build:/drainscaler=target/.../drainscaler \
//	    -stage-file build:/etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt
//
// Or directly:
//
//	ociimage -out busybox.tar -name docker.io/drainscaler/busybox:dev \
//	    -file /bin/busybox=/bin/busybox -symlink /bin/sh=busybox -entrypoint '["/bin/sh"]'
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// entry is one file or symlink of the layer.
type entry struct {
	path   string // absolute, in the image
	source string // host file, for a regular file
	link   string // target, for a symlink
	mode   int64
}

// imageConfig is the part of the OCI image configuration a Dockerfile sets.
type imageConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
}

type image struct {
	entries []entry
	config  imageConfig
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		out, name, dockerfile, user, entrypoint, cmd, workdir string
		stageFiles, files, symlinks, envs, exposes            list
	)
	flag.StringVar(&out, "out", "", "the archive to write")
	flag.StringVar(&name, "name", "", "fully qualified image name, e.g. docker.io/drainscaler/drainscaler:dev")
	flag.StringVar(&dockerfile, "dockerfile", "", "build from this Dockerfile's final stage")
	flag.Var(&stageFiles, "stage-file", "STAGE:PATH=HOSTFILE: the built file a COPY --from=STAGE PATH takes (repeatable)")
	flag.Var(&files, "file", "IMAGEPATH=HOSTFILE: a file of the image, with the host file's mode (repeatable)")
	flag.Var(&symlinks, "symlink", "IMAGEPATH=TARGET: a symbolic link of the image (repeatable)")
	flag.Var(&envs, "env", "KEY=VALUE (repeatable)")
	flag.Var(&exposes, "expose", "PORT/PROTO (repeatable)")
	flag.StringVar(&user, "user", "", "user[:group] the image runs as")
	flag.StringVar(&entrypoint, "entrypoint", "", `JSON array, e.g. '["/app"]'`)
	flag.StringVar(&cmd, "cmd", "", `JSON array, e.g. '["run"]'`)
	flag.StringVar(&workdir, "workdir", "", "working directory")
	flag.Parse()
	if out == "" || name == "" {
		return errors.New("-out and -name are required")
	}
	if !strings.Contains(strings.SplitN(name, "/", 2)[0], ".") || !strings.Contains(name, ":") {
		return fmt.Errorf("-name %q: give a fully qualified name with a registry host and a tag (docker.io/owner/name:tag), the name the CRI looks up", name)
	}
	var img image
	if dockerfile != "" {
		if len(files)+len(symlinks)+len(envs)+len(exposes) > 0 || user != "" || entrypoint != "" || cmd != "" || workdir != "" {
			return errors.New("-dockerfile takes the image's content and configuration from the Dockerfile; give only -stage-file with it")
		}
		var err error
		if img, err = fromDockerfile(dockerfile, stageFiles); err != nil {
			return err
		}
	} else {
		if len(stageFiles) > 0 {
			return errors.New("-stage-file needs -dockerfile")
		}
		for _, f := range files {
			dst, src, ok := strings.Cut(f, "=")
			if !ok || !path.IsAbs(dst) {
				return fmt.Errorf("-file %q: want /path/in/image=hostfile", f)
			}
			img.entries = append(img.entries, entry{path: dst, source: src})
		}
		for _, s := range symlinks {
			dst, target, ok := strings.Cut(s, "=")
			if !ok || !path.IsAbs(dst) || target == "" {
				return fmt.Errorf("-symlink %q: want /path/in/image=target", s)
			}
			img.entries = append(img.entries, entry{path: dst, link: target})
		}
		img.config = imageConfig{User: user, Env: envs, WorkingDir: workdir}
		for _, p := range exposes {
			if img.config.ExposedPorts == nil {
				img.config.ExposedPorts = map[string]struct{}{}
			}
			img.config.ExposedPorts[p] = struct{}{}
		}
		for _, a := range []struct {
			flag string
			val  string
			dst  *[]string
		}{{"-entrypoint", entrypoint, &img.config.Entrypoint}, {"-cmd", cmd, &img.config.Cmd}} {
			if a.val == "" {
				continue
			}
			if err := json.Unmarshal([]byte(a.val), a.dst); err != nil {
				return fmt.Errorf("%s %q: want a JSON array of strings: %w", a.flag, a.val, err)
			}
		}
	}
	digest, err := write(out, name, img)
	if err != nil {
		return err
	}
	fmt.Println(digest)
	return nil
}

// fromDockerfile reads the final stage of a Dockerfile. It understands what a
// FROM scratch stage needs and refuses the rest, so the image cannot silently
// differ from what `docker build` would make.
func fromDockerfile(file string, stageFiles list) (image, error) {
	var img image
	built := map[string]string{}
	for _, s := range stageFiles {
		key, host, ok := strings.Cut(s, "=")
		if !ok || !strings.Contains(key, ":") {
			return img, fmt.Errorf("-stage-file %q: want STAGE:PATH=HOSTFILE, e.g. build:/drainscaler=target/release/drainscaler", s)
		}
		built[key] = host
	}
	lines, err := instructions(file)
	if err != nil {
		return img, err
	}
	start := -1
	for i, l := range lines {
		if strings.EqualFold(l.op, "FROM") {
			start = i
		}
	}
	if start < 0 {
		return img, fmt.Errorf("%s: no FROM", file)
	}
	if from := strings.Fields(lines[start].args); len(from) == 0 || from[0] != "scratch" {
		return img, fmt.Errorf("%s:%d: the final stage is FROM %s; only FROM scratch can be built without a container engine", file, lines[start].line, lines[start].args)
	}
	used := map[string]bool{}
	for _, l := range lines[start+1:] {
		where := fmt.Sprintf("%s:%d", file, l.line)
		switch strings.ToUpper(l.op) {
		case "COPY":
			f := strings.Fields(l.args)
			stage := ""
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				if v, ok := strings.CutPrefix(f[0], "--from="); ok {
					stage = v
				} else {
					return img, fmt.Errorf("%s: COPY option %s is not supported", where, f[0])
				}
				f = f[1:]
			}
			if len(f) != 2 {
				return img, fmt.Errorf("%s: want COPY [--from=STAGE] SRC DST with one source", where)
			}
			src, dst := f[0], f[1]
			if strings.HasSuffix(dst, "/") {
				dst += path.Base(src)
			}
			host := ""
			if stage == "" {
				host = filepath.Join(filepath.Dir(file), src)
			} else {
				key := stage + ":" + src
				var ok bool
				if host, ok = built[key]; !ok {
					return img, fmt.Errorf("%s: COPY --from=%s %s: pass the built file with -stage-file %s=HOSTFILE", where, stage, src, key)
				}
				used[key] = true
			}
			img.entries = append(img.entries, entry{path: dst, source: host})
		case "USER":
			img.config.User = l.args
		case "EXPOSE":
			for _, p := range strings.Fields(l.args) {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				if img.config.ExposedPorts == nil {
					img.config.ExposedPorts = map[string]struct{}{}
				}
				img.config.ExposedPorts[p] = struct{}{}
			}
		case "ENV":
			k, v, ok := strings.Cut(l.args, "=")
			if !ok || strings.ContainsAny(k, " \t") {
				return img, fmt.Errorf("%s: want ENV KEY=VALUE", where)
			}
			img.config.Env = append(img.config.Env, k+"="+v)
		case "WORKDIR":
			img.config.WorkingDir = l.args
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(l.args), &v); err != nil {
				return img, fmt.Errorf("%s: %s must be in JSON (exec) form: %w", where, l.op, err)
			}
			if strings.EqualFold(l.op, "CMD") {
				img.config.Cmd = v
			} else {
				img.config.Entrypoint = v
			}
		default:
			return img, fmt.Errorf("%s: %s is not supported in the final stage", where, l.op)
		}
	}
	for key := range built {
		if !used[key] {
			return img, fmt.Errorf("-stage-file %s: the final stage copies no such file", key)
		}
	}
	return img, nil
}

type instruction struct {
	line     int
	op, args string
}

// instructions splits a Dockerfile into instructions, joining continued lines
// and dropping comments.
func instructions(file string) ([]instruction, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	first, n := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		t := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(t, "#") || (t == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			first = n
		}
		if s, ok := strings.CutSuffix(t, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(t)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{first, op, strings.TrimSpace(args)})
		cur.Reset()
	}
	return out, sc.Err()
}

// write writes the archive and returns the manifest's digest.
func write(out, name string, img image) (string, error) {
	layer, err := layerTar(img.entries)
	if err != nil {
		return "", err
	}
	layerDigest := digestOf(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       img.config,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return "", err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer)},
	})
	if err != nil {
		return "", err
	}
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": name[strings.LastIndex(name, ":")+1:],
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{md}})
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(p string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, f := range []struct {
		p string
		b []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{blobPath(config), config},
		{blobPath(layer), layer},
		{blobPath(manifest), manifest},
		{"index.json", index},
	} {
		if err := add(f.p, f.b); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return "", err
	}
	return md["digest"].(string), os.Rename(tmp, out)
}

// layerTar is the layer: parent directories, files and links, sorted, owned
// by root, with the epoch as their time.
func layerTar(entries []entry) ([]byte, error) {
	dirs := map[string]bool{}
	byPath := map[string]entry{}
	for _, e := range entries {
		p := path.Clean(e.path)
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("%s is in the image twice", p)
		}
		e.path = p
		if e.source != "" {
			st, err := os.Stat(e.source)
			if err != nil {
				return nil, err
			}
			if !st.Mode().IsRegular() {
				return nil, fmt.Errorf("%s: not a regular file", e.source)
			}
			e.mode = int64(st.Mode().Perm())
		}
		byPath[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		if _, clash := byPath[d]; clash {
			return nil, fmt.Errorf("%s is both a directory and a file", d)
		}
		names = append(names, d)
	}
	for p := range byPath {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, n := range names {
		rel := strings.TrimPrefix(n, "/")
		if dirs[n] {
			if err := tw.WriteHeader(&tar.Header{Name: rel + "/", Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
				return nil, err
			}
			continue
		}
		e := byPath[n]
		if e.link != "" {
			if err := tw.WriteHeader(&tar.Header{Name: rel, Linkname: e.link, Mode: 0o777, ModTime: epoch, Typeflag: tar.TypeSymlink}); err != nil {
				return nil, err
			}
			continue
		}
		b, err := os.ReadFile(e.source)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Name: rel, Mode: e.mode, Size: int64(len(b)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func digestOf(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func blobPath(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digestOf(b), "sha256:") }

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digestOf(b), "size": len(b)}
}
