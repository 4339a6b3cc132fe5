// cnitool-like test driver for aws-cni, written against Debian's libcni (the library that
// containerd, CRI-O and podman use to call CNI plugins). It builds offline in GOPATH mode:
//
//	GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build -o cnitool .
//
// Usage:
//
//	cnitool <validate|add|check|del> <conflist-file> <netns-path> <container-id> [ifname]
//
// Environment: CNI_PATH (':'-separated plugin dirs), CNI_ARGS (k=v;k=v), CAP_ARGS (JSON
// capability args, e.g. portMappings), CNI_CACHE_DIR (libcni's result cache).
// On success "add" prints the final result of the chain as JSON; "validate" prints the
// versions the list's plugins support. Errors go to stderr with exit code 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 5 {
		fail("usage: %s <validate|add|check|del> <conflist> <netns> <container-id> [ifname]", filepath.Base(os.Args[0]))
	}
	verb, confPath, netns, containerID := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	ifname := "eth0"
	if len(os.Args) > 5 {
		ifname = os.Args[5]
	}

	raw, err := os.ReadFile(confPath)
	if err != nil {
		fail("read %s: %v", confPath, err)
	}
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		fail("parse conflist: %v", err)
	}

	cacheDir := os.Getenv("CNI_CACHE_DIR")
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)

	rt := &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       netns,
		IfName:      ifname,
	}
	if args := os.Getenv("CNI_ARGS"); args != "" {
		for _, kv := range strings.Split(args, ";") {
			parts := strings.SplitN(kv, "=", 2)
			if len(parts) != 2 {
				fail("invalid CNI_ARGS pair %q", kv)
			}
			rt.Args = append(rt.Args, [2]string{parts[0], parts[1]})
		}
	}
	if capArgs := os.Getenv("CAP_ARGS"); capArgs != "" {
		if err := json.Unmarshal([]byte(capArgs), &rt.CapabilityArgs); err != nil {
			fail("parse CAP_ARGS: %v", err)
		}
	}

	ctx := context.Background()
	switch verb {
	case "validate":
		// Calls VERSION on every plugin of the list and checks the list version is supported.
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail("validate: %v", err)
		}
		out, _ := json.Marshal(caps)
		fmt.Println(string(out))
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("add: %v", err)
		}
		if err := res.Print(); err != nil {
			fail("print result: %v", err)
		}
	case "check":
		// libcni feeds the cached ADD result to every plugin as prevResult.
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("check: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("del: %v", err)
		}
	default:
		fail("unknown verb %q", verb)
	}
}
