package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
)

func review(t *testing.T, token string, audiences ...string) authenticationv1.TokenReviewStatus {
	t.Helper()
	tr, err := cluster.Client.AuthenticationV1().TokenReviews().Create(context.Background(), &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return tr.Status
}

func TestPodsGetProjectedTokensThatTokenReviewBindsToThePod(t *testing.T) {
	localnodeOnly(t)
	a := app{ns: cluster.Namespace(t), name: "chat", replicas: 1, grace: 1}
	a.apply(t)
	pod := a.pods(t)[0]
	pid := containerPID(t, pod.Status.ContainerStatuses[0].ContainerID)

	// The process sees its files at the mountPaths, through its own mount
	// namespace (/proc/PID/root is the process's view of the file system).
	root := fmt.Sprintf("/proc/%d/root", pid)
	read := func(path string) string {
		b, err := os.ReadFile(inRoot(t, root, path))
		if err != nil {
			t.Fatalf("read %s as the pod sees it: %v", path, err)
		}
		return strings.TrimSpace(string(b))
	}
	if ns := read("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); ns != a.ns {
		t.Errorf("serviceaccount/namespace = %q, want %q", ns, a.ns)
	}
	if ca := read("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"); !strings.Contains(ca, "BEGIN CERTIFICATE") {
		t.Errorf("serviceaccount/ca.crt is not a certificate: %q", ca)
	}
	apiToken := read("/var/run/secrets/kubernetes.io/serviceaccount/token")
	dsToken := read("/var/run/secrets/drainscaler.io/serviceaccount/token")

	// The drainscaler token is accepted for audience drainscaler only, and
	// names its pod.
	st := review(t, dsToken, "drainscaler")
	if !st.Authenticated {
		t.Fatalf("drainscaler token not authenticated: %s", st.Error)
	}
	if want := "system:serviceaccount:" + a.ns + ":default"; st.User.Username != want {
		t.Errorf("username %q, want %q", st.User.Username, want)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-name"]; len(got) != 1 || got[0] != pod.Name {
		t.Errorf("bound pod name %v, want %s", got, pod.Name)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != string(pod.UID) {
		t.Errorf("bound pod uid %v, want %s", got, pod.UID)
	}
	if st := review(t, dsToken); st.Authenticated {
		t.Errorf("drainscaler token was accepted for the API server's own audience")
	}
	if st := review(t, apiToken); !st.Authenticated {
		t.Errorf("kube-api-access token not accepted by the API server: %s", st.Error)
	}
	if st := review(t, apiToken, "drainscaler"); st.Authenticated {
		t.Errorf("kube-api-access token was accepted for audience drainscaler")
	}

	// A TokenRequest made directly, bound to the pod, is reviewed the same way.
	tr, err := cluster.Client.CoreV1().ServiceAccounts(a.ns).CreateToken(context.Background(), "default", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{"drainscaler"},
			ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	if st := review(t, tr.Status.Token, "drainscaler"); !st.Authenticated || st.User.Extra["authentication.kubernetes.io/pod-name"][0] != pod.Name {
		t.Errorf("TokenRequest token review: %+v", st)
	}

	// Once the pod is gone, its tokens are worthless.
	if err := cluster.Client.CoreV1().Pods(a.ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, 30*time.Second, "the pod to be deleted", func() (bool, error) {
		_, err := cluster.Client.CoreV1().Pods(a.ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	// The API server caches successful token authentications for 10s
	// (TokenSuccessCacheTTL), so the refusal comes within about that long.
	clustertest.WaitFor(t, 30*time.Second, "the deleted pod's token to be refused", func() (bool, error) {
		return !review(t, dsToken, "drainscaler").Authenticated, nil
	})
}

// inRoot resolves path as a process with the given /proc/PID/root sees it.
// Absolute symlinks (/var/run -> /run) must be followed inside that root:
// the kernel would follow them from the caller's root instead.
func inRoot(t *testing.T, root, path string) string {
	t.Helper()
	resolved := "/"
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for hops := 0; len(parts) > 0; {
		next := filepath.Join(resolved, parts[0])
		parts = parts[1:]
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil { // not a symlink (or missing: reading will say)
			resolved = next
			continue
		}
		if hops++; hops > 40 {
			t.Fatalf("too many symlinks resolving %s", path)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(next), target)
		}
		parts = append(strings.Split(strings.Trim(target, "/"), "/"), parts...)
		resolved = "/"
	}
	return filepath.Join(root, resolved)
}
