// Package proto holds Tributary's versioned wire schemas and their generated
// Go code. Regenerate after editing a .proto file with:
//
//	go generate ./proto
//
// which needs protoc (Debian: protobuf-compiler) and
// protoc-gen-go (go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12).
//
// cloudevent.proto is the CloudEvents protobuf event format as shipped by
// sdk-go (binding/format/protobuf/v2/pb); its Go code is sdk-go's own, so
// records decode straight into sdk-go events.
package proto

//go:generate protoc -I . -I /usr/include --go_out=. --go_opt=module=github.com/tributary-io/tributary/proto sync/v1/sync.proto
