// Package deploy holds no code: its tests check the deployment files in this
// directory against each other and against the binaries' own configuration
// parsers. They decode the Kubernetes manifests (k8s/), the systemd units
// (systemd/), the example and packaged configurations (config/, package/)
// and run the provisioning script (provision/) on temporary directories, so
// `go test ./...` catches a port, path, label or key that drifted apart.
//
// The build and image scripts (release.sh, image/) are not run by the tests:
// they need minutes and the network; see README.md.
package deploy
