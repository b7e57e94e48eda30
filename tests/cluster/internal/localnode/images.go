package localnode

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync"
)

// ImageMap maps container images to local executables. Entries come from
// flags and from a file (IMAGE=PATH per line, # comments) that is read again
// at every container start, so a test can map an image without a restart.
type ImageMap struct {
	mu    sync.Mutex
	fixed map[string]string
	file  string
}

// NewImageMap takes IMAGE=PATH entries and an optional file.
func NewImageMap(entries []string, file string) (*ImageMap, error) {
	m := &ImageMap{fixed: map[string]string{}, file: file}
	for _, e := range entries {
		for _, part := range strings.Split(e, ",") {
			if part = strings.TrimSpace(part); part == "" {
				continue
			}
			img, path, ok := strings.Cut(part, "=")
			if !ok || img == "" || path == "" {
				return nil, fmt.Errorf("image map entry %q: want IMAGE=PATH", part)
			}
			m.fixed[img] = path
		}
	}
	return m, nil
}

// Resolve finds the executable for an image. It tries the image as written,
// then without a tag or digest, then without a docker.io/ or
// docker.io/library/ prefix.
func (m *ImageMap) Resolve(image string) (string, error) {
	all := map[string]string{}
	m.mu.Lock()
	for k, v := range m.fixed {
		all[k] = v
	}
	m.mu.Unlock()
	if m.file != "" {
		f, err := os.Open(m.file)
		if err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				if line == "" || strings.HasPrefix(line, "#") {
					continue
				}
				if img, path, ok := strings.Cut(line, "="); ok {
					all[strings.TrimSpace(img)] = strings.TrimSpace(path)
				}
			}
			f.Close()
		}
	}
	for _, cand := range imageCandidates(image) {
		if p, ok := all[cand]; ok {
			if st, err := os.Stat(p); err != nil || st.IsDir() {
				return "", fmt.Errorf("image %s maps to %s, which is not an executable file", image, p)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("image %s is not in the local node's image map (scripts/cluster image-map %s /path/to/binary)", image, image)
}

func imageCandidates(image string) []string {
	out := []string{image}
	name := image
	if i := strings.Index(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	out = append(out, name)
	for _, prefix := range []string{"docker.io/library/", "docker.io/"} {
		if strings.HasPrefix(name, prefix) {
			out = append(out, strings.TrimPrefix(name, prefix))
		}
	}
	return out
}
