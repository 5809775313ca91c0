package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/cloud/server"
)

// The subset of the Kubernetes API the manifests use. Decoding is strict
// (unknown fields are errors), so a misspelt or misplaced key fails the test
// instead of being ignored as kubectl would silently do for some of them.

type object struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Metadata   metadata `yaml:"metadata"`

	// ConfigMap, Secret
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Type       string            `yaml:"type"`

	// Service, StatefulSet
	Spec yaml.Node `yaml:"spec"`

	// Kustomization
	Namespace string   `yaml:"namespace"`
	Resources []string `yaml:"resources"`
}

type metadata struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type serviceSpec struct {
	Type                  string            `yaml:"type"`
	ClusterIP             string            `yaml:"clusterIP"`
	ExternalTrafficPolicy string            `yaml:"externalTrafficPolicy"`
	Selector              map[string]string `yaml:"selector"`
	Ports                 []servicePort     `yaml:"ports"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	Protocol   string `yaml:"protocol"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
}

type statefulSetSpec struct {
	Replicas            int    `yaml:"replicas"`
	ServiceName         string `yaml:"serviceName"`
	PodManagementPolicy string `yaml:"podManagementPolicy"`
	UpdateStrategy      struct {
		Type string `yaml:"type"`
	} `yaml:"updateStrategy"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata metadata `yaml:"metadata"`
		Spec     podSpec  `yaml:"spec"`
	} `yaml:"template"`
	VolumeClaimTemplates []struct {
		Metadata metadata `yaml:"metadata"`
		Spec     struct {
			AccessModes []string `yaml:"accessModes"`
			Resources   struct {
				Requests map[string]string `yaml:"requests"`
			} `yaml:"resources"`
			StorageClassName string `yaml:"storageClassName"`
		} `yaml:"spec"`
	} `yaml:"volumeClaimTemplates"`
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot        bool   `yaml:"runAsNonRoot"`
		RunAsUser           int    `yaml:"runAsUser"`
		RunAsGroup          int    `yaml:"runAsGroup"`
		FSGroup             int    `yaml:"fsGroup"`
		FSGroupChangePolicy string `yaml:"fsGroupChangePolicy"`
		SeccompProfile      struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
	Containers []container `yaml:"containers"`
	Volumes    []volume    `yaml:"volumes"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Args            []string `yaml:"args"`
	Ports           []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	PeriodSeconds       int `yaml:"periodSeconds"`
	FailureThreshold    int `yaml:"failureThreshold"`
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName  string    `yaml:"secretName"`
		DefaultMode int       `yaml:"defaultMode"`
		Items       []keyPath `yaml:"items"`
	} `yaml:"secret"`
	EmptyDir *struct{} `yaml:"emptyDir"`
}

type keyPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
}

// imageUID is the user deploy/ociimage's images run as.
const imageUID = 65532

// decodeStrict decodes one YAML node into v, refusing unknown fields.
func decodeStrict(n *yaml.Node, v any) error {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(n); err != nil {
		return err
	}
	dec := yaml.NewDecoder(&buf)
	dec.KnownFields(true)
	return dec.Decode(v)
}

// loadManifests decodes every document of every file kustomization.yaml in
// dir lists, checking that the list and the directory's manifests agree.
func loadManifests(t tester, dir string) []object {
	t.Helper()
	var k object
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.Kind != "Kustomization" || k.Namespace != "tributary" {
		t.Fatalf("kustomization.yaml: kind %q namespace %q", k.Kind, k.Namespace)
	}
	onDisk, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range onDisk {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := append([]string(nil), k.Resources...)
	sort.Strings(got)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("kustomization.yaml resources %v, directory has %v", got, want)
	}

	var objs []object
	for _, f := range k.Resources {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		for i := 0; ; i++ {
			var o object
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Fatalf("%s document %d: apiVersion, kind and metadata.name are required: %+v", f, i, o.Metadata)
			}
			objs = append(objs, o)
		}
	}
	return objs
}

// manifests indexes the decoded objects by kind and name.
type manifests map[string]map[string]object

func index(t tester, objs []object) manifests {
	t.Helper()
	m := manifests{}
	for _, o := range objs {
		if m[o.Kind] == nil {
			m[o.Kind] = map[string]object{}
		}
		if _, dup := m[o.Kind][o.Metadata.Name]; dup {
			t.Fatalf("%s %s defined twice", o.Kind, o.Metadata.Name)
		}
		m[o.Kind][o.Metadata.Name] = o
	}
	return m
}

func (m manifests) get(t tester, kind, name string) object {
	t.Helper()
	o, ok := m[kind][name]
	if !ok {
		t.Fatalf("no %s %s", kind, name)
	}
	return o
}

func listenPort(t tester, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func subset(sub, super map[string]string) bool {
	if len(sub) == 0 {
		return false
	}
	for k, v := range sub {
		if super[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesManifests checks deploy/k8s as a whole: the ConfigMap's
// cloud.yaml is a valid configuration for the real parser, and the
// StatefulSet, Services, ConfigMap and Secret agree with it and with each
// other on ports, protocols, paths, keys, labels and selectors.
func TestKubernetesManifests(t *testing.T) {
	checkKubernetesManifests(t, "k8s")
}

func checkKubernetesManifests(t tester, dir string) {
	t.Helper()
	m := index(t, loadManifests(t, dir))
	for kind, byName := range m {
		for name, o := range byName {
			if kind != "Namespace" && o.Metadata.Namespace != "tributary" {
				t.Errorf("%s %s: namespace %q, want tributary", kind, name, o.Metadata.Namespace)
			}
			if o.Metadata.Labels["app.kubernetes.io/part-of"] != "tributary" {
				t.Errorf("%s %s: no app.kubernetes.io/part-of=tributary label", kind, name)
			}
		}
	}
	m.get(t, "Namespace", "tributary")

	// The configuration, through the cloud's own parser.
	cm := m.get(t, "ConfigMap", "tributary-cloud")
	cfg, err := server.ParseConfig([]byte(cm.Data["cloud.yaml"]))
	if err != nil {
		t.Fatalf("ConfigMap cloud.yaml: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("ConfigMap cloud.yaml: %v", err)
	}
	if cfg.Sync.CertFile == "" || len(cfg.API.Tokens) == 0 {
		t.Fatal("ConfigMap cloud.yaml: a cluster deployment needs sync certificates and API tokens, not the development PKI and token")
	}
	syncPort, apiPort := listenPort(t, cfg.Sync.Listen), listenPort(t, cfg.API.Listen)

	// The StatefulSet.
	stsObj := m.get(t, "StatefulSet", "tributary-cloud")
	var sts statefulSetSpec
	if err := decodeStrict(&stsObj.Spec, &sts); err != nil {
		t.Fatalf("StatefulSet spec: %v", err)
	}
	if sts.Replicas != 1 {
		t.Errorf("StatefulSet replicas %d: the central log has a single writer", sts.Replicas)
	}
	podLabels := sts.Template.Metadata.Labels
	if !subset(sts.Selector.MatchLabels, podLabels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", sts.Selector.MatchLabels, podLabels)
	}
	gov := m.get(t, "Service", sts.ServiceName)
	var govSpec serviceSpec
	if err := decodeStrict(&gov.Spec, &govSpec); err != nil {
		t.Fatal(err)
	}
	if govSpec.ClusterIP != "None" {
		t.Errorf("serviceName %s: governing service must be headless (clusterIP: None)", sts.ServiceName)
	}
	pod := sts.Template.Spec
	if sc := pod.SecurityContext; !sc.RunAsNonRoot || sc.RunAsUser != imageUID || sc.RunAsGroup != imageUID || sc.FSGroup != imageUID {
		t.Errorf("pod securityContext %+v: want non-root %d (the image's user) and fsGroup %d (volume ownership)", sc, imageUID, imageUID)
	}
	if pod.TerminationGracePeriodSeconds < 30 {
		t.Errorf("terminationGracePeriodSeconds %d: the log needs time for its last commit", pod.TerminationGracePeriodSeconds)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	ports := map[string]struct {
		port  int
		proto string
	}{}
	for _, p := range c.Ports {
		ports[p.Name] = struct {
			port  int
			proto string
		}{p.ContainerPort, p.Protocol}
	}
	if p := ports["quic"]; p.port != syncPort || p.proto != "UDP" {
		t.Errorf("container port quic = %+v, want %d/UDP (sync.listen %s)", p, syncPort, cfg.Sync.Listen)
	}
	if p := ports["http"]; p.port != apiPort || p.proto != "TCP" {
		t.Errorf("container port http = %+v, want %d/TCP (api.listen %s)", p, apiPort, cfg.API.Listen)
	}
	for name, pr := range map[string]*probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != "/healthz" || pr.HTTPGet.Port != "http" {
			t.Errorf("%s: want GET /healthz on the http port, got %+v", name, pr)
		}
	}
	if sc := c.SecurityContext; sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !sc.ReadOnlyRootFilesystem || strings.Join(sc.Capabilities.Drop, ",") != "ALL" {
		t.Errorf("container securityContext %+v: want no privilege escalation, read-only root, all capabilities dropped", sc)
	}

	// Volumes: every mount names a volume or a claim template; the data
	// directory is the claim; the config and certificates come from the
	// ConfigMap and Secret.
	vols := map[string]volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	claims := map[string]bool{}
	for _, vc := range sts.VolumeClaimTemplates {
		claims[vc.Metadata.Name] = true
		if len(vc.Spec.AccessModes) != 1 || vc.Spec.AccessModes[0] != "ReadWriteOnce" || vc.Spec.Resources.Requests["storage"] == "" {
			t.Errorf("volumeClaimTemplate %s: want ReadWriteOnce with a storage request, got %+v", vc.Metadata.Name, vc.Spec)
		}
	}
	configArg := ""
	for i, a := range c.Args {
		if a == "-config" && i+1 < len(c.Args) {
			configArg = c.Args[i+1]
		}
	}
	secret := m.get(t, "Secret", "tributary-cloud-tls")
	secretKeys := map[string]bool{}
	for k := range secret.StringData {
		secretKeys[k] = true
	}
	for k := range secret.Data {
		secretKeys[k] = true
	}
	files := map[string]string{} // file in the container -> where it comes from
	dataOnClaim, configMounted := false, false
	for _, vm := range c.VolumeMounts {
		v, isVol := vols[vm.Name]
		switch {
		case claims[vm.Name]:
			if isVol {
				t.Errorf("volume %s is both a pod volume and a claim template", vm.Name)
			}
			if path.Clean(vm.MountPath) == path.Clean(cfg.DataDir) {
				dataOnClaim = true
			}
		case !isVol:
			t.Errorf("volumeMount %s names no volume", vm.Name)
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != cm.Metadata.Name {
				t.Errorf("volume %s: ConfigMap %q, want %q", v.Name, v.ConfigMap.Name, cm.Metadata.Name)
			}
			if vm.SubPath != "" {
				if _, ok := cm.Data[vm.SubPath]; !ok {
					t.Errorf("mount %s: ConfigMap has no key %q", vm.MountPath, vm.SubPath)
				}
				if vm.MountPath == configArg {
					configMounted = true
				}
			}
		case v.Secret != nil:
			if v.Secret.SecretName != secret.Metadata.Name {
				t.Errorf("volume %s: Secret %q, want %q", v.Name, v.Secret.SecretName, secret.Metadata.Name)
			}
			if v.Secret.DefaultMode&0o004 != 0 {
				t.Errorf("volume %s: defaultMode %#o lets others read the key", v.Name, v.Secret.DefaultMode)
			}
			for _, it := range v.Secret.Items {
				if !secretKeys[it.Key] {
					t.Errorf("volume %s: Secret has no key %q", v.Name, it.Key)
				}
				files[path.Join(vm.MountPath, it.Path)] = "secret " + it.Key
			}
		}
	}
	if !dataOnClaim {
		t.Errorf("data_dir %s is not on the PersistentVolumeClaim", cfg.DataDir)
	}
	if !configMounted || configArg == "" {
		t.Errorf("-config %q is not the mounted ConfigMap key", configArg)
	}
	for _, f := range []string{cfg.Sync.CertFile, cfg.Sync.KeyFile, cfg.Sync.ClientCAFile} {
		if files[f] == "" {
			t.Errorf("cloud.yaml names %s, which no Secret item mounts (mounted: %v)", f, files)
		}
	}

	// Services: the selectors pick the pods, target ports name container
	// ports of the same protocol, and QUIC is UDP, the API TCP.
	seen := map[string]bool{}
	for name, svc := range m["Service"] {
		var s serviceSpec
		if err := decodeStrict(&svc.Spec, &s); err != nil {
			t.Fatalf("Service %s: %v", name, err)
		}
		if !subset(s.Selector, podLabels) {
			t.Errorf("Service %s: selector %v does not select the pods %v", name, s.Selector, podLabels)
		}
		for _, p := range s.Ports {
			cp, ok := ports[p.TargetPort]
			if !ok {
				t.Errorf("Service %s port %s: targetPort %q is not a container port", name, p.Name, p.TargetPort)
				continue
			}
			if p.Protocol != cp.proto {
				t.Errorf("Service %s port %s: %s to a %s container port", name, p.Name, p.Protocol, cp.proto)
			}
			seen[p.TargetPort+"/"+p.Protocol] = true
		}
	}
	if !seen["quic/UDP"] || !seen["http/TCP"] {
		t.Errorf("services expose %v; want quic over UDP and http over TCP", seen)
	}
	sync := m.get(t, "Service", "tributary-cloud-sync")
	var syncSpec serviceSpec
	if err := decodeStrict(&sync.Spec, &syncSpec); err != nil {
		t.Fatal(err)
	}
	if syncSpec.Type != "LoadBalancer" && syncSpec.Type != "NodePort" {
		t.Errorf("tributary-cloud-sync is %q: gateways outside the cluster cannot reach it", syncSpec.Type)
	}
}

// TestManifestCheckFails: the check above catches drift. Each case breaks a
// copy of deploy/k8s in one way and expects the check to fail.
func TestManifestCheckFails(t *testing.T) {
	for _, tc := range []struct{ name, file, old, new string }{
		{"api port", "configmap.yaml", `listen: ":8080"`, `listen: ":8081"`},
		{"quic over tcp", "services.yaml", "protocol: UDP", "protocol: TCP"},
		{"selector", "services.yaml", "  selector:\n    app.kubernetes.io/name: tributary-cloud\n  ports:\n    - name: quic", "  selector:\n    app.kubernetes.io/name: tributary-edge\n  ports:\n    - name: quic"},
		{"probe path", "statefulset.yaml", "path: /healthz\n              port: http\n            periodSeconds: 5", "path: /health\n              port: http\n            periodSeconds: 5"},
		{"data dir", "statefulset.yaml", "mountPath: /var/lib/tributary/cloud", "mountPath: /var/lib/tributary"},
		{"secret key", "secret.yaml", "  sync.key:", "  sync-key:"},
		{"unknown field", "statefulset.yaml", "  replicas: 1", "  replicas: 1\n  replica: 1"},
		{"bad config", "configmap.yaml", "log_level: info", "log_level: chatty"},
		{"unlisted file", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			entries, err := os.ReadDir("k8s")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				data, err := os.ReadFile(filepath.Join("k8s", e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if e.Name() == tc.file {
					if !bytes.Contains(data, []byte(tc.old)) {
						t.Fatalf("%s has no %q", tc.file, tc.old)
					}
					data = bytes.Replace(data, []byte(tc.old), []byte(tc.new), 1)
				}
				if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.file == "" {
				if err := os.WriteFile(filepath.Join(dir, "extra.yaml"), []byte("kind: ConfigMap\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ft := &failureRecorder{T: t}
			func() {
				defer func() {
					if r := recover(); r != nil && r != errStopTest {
						panic(r)
					}
				}()
				checkKubernetesManifests(ft, dir)
			}()
			if !ft.failed {
				t.Errorf("the manifests check passed with %s broken", tc.name)
			}
		})
	}
}

// tester is the part of *testing.T the checks use, so TestManifestCheckFails
// can run them against a recorder.
type tester interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Fatal(args ...any)
}

var errStopTest = errors.New("check stopped at its first fatal failure")

// failureRecorder notes failures instead of failing the test; Fatal stops
// the check by panicking with errStopTest.
type failureRecorder struct {
	T      *testing.T
	failed bool
}

func (f *failureRecorder) Helper() {}
func (f *failureRecorder) Errorf(format string, args ...any) {
	f.failed = true
	f.T.Logf("check failed as expected: "+format, args...)
}
func (f *failureRecorder) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	panic(errStopTest)
}
func (f *failureRecorder) Fatal(args ...any) {
	f.Errorf("%s", fmt.Sprint(args...))
	panic(errStopTest)
}
