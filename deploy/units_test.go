package deploy

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/edge/gateway"
)

// unit is a systemd unit file: section -> key -> values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, p string) unit {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case section == "":
			t.Fatalf("%s:%d: %q outside a section", p, n, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s:%d: %q is not key=value", p, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %d values %q, want one", section, key, len(v), v)
	}
	return v[0]
}

// TestUnitsMatchPackages checks each service unit against the package
// layout release.sh builds and the configuration it installs: the binary
// and config paths, the state directory the config's data_dir lives in, the
// user, the restart policy and the sandbox.
func TestUnitsMatchPackages(t *testing.T) {
	release, err := os.ReadFile("release.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"edge", "cloud"} {
		t.Run(part, func(t *testing.T) {
			pkg := "tributary-" + part
			u := parseUnit(t, filepath.Join("systemd", pkg+".service"))
			conf := "/etc/tributary/" + part + ".yaml"
			if got, want := u.one(t, "Service", "ExecStart"), "/usr/bin/"+pkg+" -config "+conf; got != want {
				t.Errorf("ExecStart=%s, want %s", got, want)
			}
			if !strings.Contains(string(release), `"$stage/usr/bin/$pkg"`) || !strings.Contains(string(release), `"$stage/etc/tributary/`+part+`.yaml"`) {
				t.Errorf("release.sh does not install /usr/bin/%s and %s", pkg, conf)
			}
			// The packaged configuration, through the binary's own parser.
			var dataDir string
			switch part {
			case "edge":
				c, err := gateway.LoadConfig(filepath.Join("config", "edge.yaml"))
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Validate(); err != nil {
					t.Fatal(err)
				}
				dataDir = c.DataDir
				if c.Cloud.CAFile != "/etc/tributary/ca.crt" || c.Cloud.CertFile != "/etc/tributary/gateway.crt" || c.Cloud.KeyFile != "/etc/tributary/gateway.key" {
					t.Errorf("edge.yaml's certificate paths %+v are not where tributary-edge-provision installs them", c.Cloud)
				}
			case "cloud":
				c, err := server.LoadConfig(filepath.Join("package", "cloud.yaml"))
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Validate(); err != nil {
					t.Fatal(err)
				}
				dataDir = c.DataDir
				if len(c.Subscriptions) != 0 {
					t.Error("the packaged cloud.yaml pushes to a sink nobody configured")
				}
			}
			state := u.one(t, "Service", "StateDirectory")
			if dataDir != "/var/lib/"+state || state != "tributary/"+part {
				t.Errorf("StateDirectory=%s, config data_dir %s: want tributary/%s and /var/lib/tributary/%s", state, dataDir, part, part)
			}
			for k, want := range map[string]string{
				"User": "tributary", "Group": "tributary", "Restart": "always",
				"NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true",
				"PrivateDevices": "true", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "KillSignal": "SIGTERM",
			} {
				if got := u.one(t, "Service", k); got != want {
					t.Errorf("%s=%s, want %s", k, got, want)
				}
			}
			if u.one(t, "Unit", "StartLimitIntervalSec") != "0" {
				t.Error("StartLimitIntervalSec must be 0: a gateway or cloud never stops retrying")
			}
			if u.one(t, "Install", "WantedBy") != "multi-user.target" {
				t.Error("not wanted by multi-user.target")
			}
		})
	}

	// The edge applies a provisioning bundle before it starts, as root, from
	// the places its unit's conditions look at.
	u := parseUnit(t, filepath.Join("systemd", "tributary-edge.service"))
	pre := u.one(t, "Service", "ExecStartPre")
	if pre != "+/usr/lib/tributary/tributary-edge-provision" || !strings.Contains(string(release), `"$stage/usr/lib/tributary/tributary-edge-provision"`) {
		t.Errorf("ExecStartPre=%s; release.sh must install the script there", pre)
	}
	script, err := os.ReadFile(filepath.Join("provision", "tributary-edge-provision"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join("provision", "tributary-edge-provision"))
	if err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("provision script is not executable (%v)", err)
	}
	for _, cond := range u["Unit"]["ConditionPathExists"] {
		p := strings.TrimPrefix(cond, "|")
		if p == "/etc/tributary/gateway.crt" {
			continue
		}
		dir := filepath.Dir(p)
		if !strings.Contains(string(script), dir) {
			t.Errorf("ConditionPathExists=%s: the provision script does not look in %s", cond, dir)
		}
	}
	if len(u["Unit"]["ConditionPathExists"]) < 2 {
		t.Error("the edge unit has no provisioning conditions")
	}
}
