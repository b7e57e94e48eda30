package localnode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// volumes renders a pod's volumes into directories under the pod's state
// dir, which the exec shim bind-mounts at the containers' mountPaths.
// Supported: emptyDir, hostPath, configMap, secret, downwardAPI and
// projected (serviceAccountToken, configMap, secret, downwardAPI).
// Downward API files and due tokens are refreshed every second,
// ConfigMaps and Secrets every 30s.
type volumes struct {
	w        *podWorker
	mu       sync.Mutex
	paths    map[string]string
	tokens   map[string]*token // by file path
	lastFull time.Time
}

type token struct {
	issued time.Time
	ttl    time.Duration
}

// due is the kubelet's rule: refresh after 80% of the lifetime, or a day.
func (t *token) due(now time.Time) bool {
	return now.After(t.issued.Add(t.ttl*8/10)) || now.After(t.issued.Add(24*time.Hour))
}

func newVolumes(w *podWorker) *volumes {
	return &volumes{w: w, paths: map[string]string{}, tokens: map[string]*token{}}
}

func (v *volumes) path(name string) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	p, ok := v.paths[name]
	if !ok {
		return "", fmt.Errorf("volume %q is not defined or not ready", name)
	}
	return p, nil
}

func (v *volumes) setup(ctx context.Context) error {
	return v.render(ctx, true)
}

func (v *volumes) refresh(ctx context.Context, full bool) {
	v.mu.Lock()
	if time.Since(v.lastFull) > 30*time.Second {
		full = true
	}
	v.mu.Unlock()
	if err := v.render(ctx, full); err != nil && ctx.Err() == nil {
		v.w.n.log.Warn("refresh volumes", "pod", v.w.key(), "err", err)
	}
}

func (v *volumes) stop() {}

func (v *volumes) render(ctx context.Context, full bool) error {
	pod := v.w.current()
	base := filepath.Join(v.w.dir, "volumes")
	for _, vol := range pod.Spec.Volumes {
		dir := filepath.Join(base, vol.Name)
		var err error
		switch {
		case vol.EmptyDir != nil:
			err = os.MkdirAll(dir, 0o777)
		case vol.HostPath != nil:
			dir = vol.HostPath.Path
			err = v.hostPath(vol.HostPath)
		case vol.ConfigMap != nil:
			if full {
				err = v.configMap(ctx, pod, dir, vol.ConfigMap.Name, vol.ConfigMap.Items, vol.ConfigMap.Optional, vol.ConfigMap.DefaultMode)
			}
		case vol.Secret != nil:
			if full {
				err = v.secret(ctx, pod, dir, vol.Secret.SecretName, vol.Secret.Items, vol.Secret.Optional, vol.Secret.DefaultMode)
			}
		case vol.DownwardAPI != nil:
			err = v.downward(pod, dir, vol.DownwardAPI.Items, vol.DownwardAPI.DefaultMode)
		case vol.Projected != nil:
			err = v.projected(ctx, pod, dir, vol.Projected, full)
		default:
			err = fmt.Errorf("volume type not supported by localnode")
		}
		if err != nil {
			return fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		v.mu.Lock()
		v.paths[vol.Name] = dir
		v.mu.Unlock()
	}
	if full {
		v.mu.Lock()
		v.lastFull = time.Now()
		v.mu.Unlock()
	}
	return nil
}

func (v *volumes) hostPath(hp *v1.HostPathVolumeSource) error {
	t := v1.HostPathUnset
	if hp.Type != nil {
		t = *hp.Type
	}
	switch t {
	case v1.HostPathDirectoryOrCreate:
		return os.MkdirAll(hp.Path, 0o755)
	case v1.HostPathFileOrCreate:
		if err := os.MkdirAll(filepath.Dir(hp.Path), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(hp.Path, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		return f.Close()
	case v1.HostPathUnset:
		return nil
	default:
		_, err := os.Stat(hp.Path)
		return err
	}
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m)
}

// writeFile replaces a file atomically (rename in the same directory) and
// only when the content changed, so readers never see half a token.
func writeFile(path string, data []byte, perm os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func safeJoin(dir, rel string) (string, error) {
	if rel == "" || filepath.IsAbs(rel) || strings.Contains(rel, "..") {
		return "", fmt.Errorf("path %q must be relative and stay inside the volume", rel)
	}
	return filepath.Join(dir, rel), nil
}

func writeKeys(dir string, data map[string][]byte, items []v1.KeyToPath, optional bool, defMode *int32, def os.FileMode) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(items) == 0 {
		for k, val := range data {
			p, err := safeJoin(dir, k)
			if err != nil {
				return err
			}
			if err := writeFile(p, val, mode(defMode, def)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		val, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return fmt.Errorf("key %s not found", it.Key)
		}
		p, err := safeJoin(dir, it.Path)
		if err != nil {
			return err
		}
		m := mode(defMode, def)
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		if err := writeFile(p, val, m); err != nil {
			return err
		}
	}
	return nil
}

func (v *volumes) configMap(ctx context.Context, pod *v1.Pod, dir, name string, items []v1.KeyToPath, optional *bool, defMode *int32) error {
	opt := optional != nil && *optional
	cm, err := v.w.n.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if opt && apierrors.IsNotFound(err) {
			return os.MkdirAll(dir, 0o755)
		}
		return fmt.Errorf("configmap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, val := range cm.Data {
		data[k] = []byte(val)
	}
	for k, val := range cm.BinaryData {
		data[k] = val
	}
	return writeKeys(dir, data, items, opt, defMode, 0o644)
}

func (v *volumes) secret(ctx context.Context, pod *v1.Pod, dir, name string, items []v1.KeyToPath, optional *bool, defMode *int32) error {
	opt := optional != nil && *optional
	s, err := v.w.n.client.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if opt && apierrors.IsNotFound(err) {
			return os.MkdirAll(dir, 0o755)
		}
		return fmt.Errorf("secret %s: %w", name, err)
	}
	return writeKeys(dir, s.Data, items, opt, defMode, 0o644)
}

func (v *volumes) downward(pod *v1.Pod, dir string, items []v1.DownwardAPIVolumeFile, defMode *int32) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, it := range items {
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = podField(pod, it.FieldRef.FieldPath, v.w.podIP())
		case it.ResourceFieldRef != nil:
			err = fmt.Errorf("resourceFieldRef in downwardAPI volumes is not supported by localnode")
		}
		if err != nil {
			return fmt.Errorf("%s: %w", it.Path, err)
		}
		p, err := safeJoin(dir, it.Path)
		if err != nil {
			return err
		}
		m := mode(defMode, 0o644)
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		if err := writeFile(p, []byte(val), m); err != nil {
			return err
		}
	}
	return nil
}

func (v *volumes) projected(ctx context.Context, pod *v1.Pod, dir string, pv *v1.ProjectedVolumeSource, full bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, src := range pv.Sources {
		var err error
		switch {
		case src.ServiceAccountToken != nil:
			err = v.token(ctx, pod, dir, src.ServiceAccountToken, pv.DefaultMode)
		case src.ConfigMap != nil:
			if full {
				err = v.configMap(ctx, pod, dir, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, pv.DefaultMode)
			}
		case src.Secret != nil:
			if full {
				err = v.secret(ctx, pod, dir, src.Secret.Name, src.Secret.Items, src.Secret.Optional, pv.DefaultMode)
			}
		case src.DownwardAPI != nil:
			err = v.downward(pod, dir, src.DownwardAPI.Items, pv.DefaultMode)
		default:
			err = fmt.Errorf("projected source not supported by localnode")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// token writes a pod-bound ServiceAccount token from the TokenRequest API,
// and replaces it when due.
func (v *volumes) token(ctx context.Context, pod *v1.Pod, dir string, src *v1.ServiceAccountTokenProjection, defMode *int32) error {
	p, err := safeJoin(dir, src.Path)
	if err != nil {
		return err
	}
	now := time.Now()
	v.mu.Lock()
	t := v.tokens[p]
	v.mu.Unlock()
	if t != nil && !t.due(now) {
		return nil
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	var aud []string
	if src.Audience != "" {
		aud = []string{src.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := v.w.n.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         aud,
			ExpirationSeconds: ptr.To(exp),
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for serviceaccount %s: %w", sa, err)
	}
	if err := writeFile(p, []byte(tr.Status.Token), mode(defMode, 0o644)); err != nil {
		return err
	}
	v.mu.Lock()
	v.tokens[p] = &token{issued: now, ttl: time.Duration(exp) * time.Second}
	v.mu.Unlock()
	return nil
}
