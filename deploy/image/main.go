// Command image builds the engine's container image without a container
// engine: one layer holding the static ingest binary at /ingest, run as a
// non-root user, written as a tarball that `docker load`, `kind load
// image-archive` and `crane push` accept, and optionally as an OCI image
// layout. make image runs it; deploy/Dockerfile builds the same image for
// those who have Docker.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// User is the image's user: distroless's "nonroot", uid and gid 65532. The
// manifests in deploy/k8s run as the same ids.
const User = "65532:65532"

func main() {
	var (
		binary  = flag.String("binary", "bin/image/ingest", "static linux binary to put at /ingest")
		tag     = flag.String("tag", "ingest:dev", "image reference recorded in the tarball")
		tarPath = flag.String("tar", "bin/image/ingest.tar", "tarball to write (docker load, kind load image-archive, crane push)")
		ociDir  = flag.String("oci", "", "also write an OCI image layout to this directory, if set")
		version = flag.String("version", "", "org.opencontainers.image.version label")
	)
	flag.Parse()
	if err := run(*binary, *tag, *tarPath, *ociDir, *version); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(binary, tag, tarPath, ociDir, version string) error {
	img, err := Build(binary, version)
	if err != nil {
		return err
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("parse tag: %w", err)
	}
	if err := tarball.WriteToFile(tarPath, ref, img); err != nil {
		return fmt.Errorf("write tarball: %w", err)
	}
	if ociDir != "" {
		if err := os.RemoveAll(ociDir); err != nil {
			return fmt.Errorf("clear oci layout: %w", err)
		}
		p, err := layout.Write(ociDir, empty.Index)
		if err != nil {
			return fmt.Errorf("write oci layout: %w", err)
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref.TagStr()})); err != nil {
			return fmt.Errorf("write oci layout: %w", err)
		}
	}
	size, err := CompressedSize(img)
	if err != nil {
		return err
	}
	fi, err := os.Stat(binary)
	if err != nil {
		return fmt.Errorf("stat binary: %w", err)
	}
	fmt.Printf("image %s: binary %.1f MB, compressed layers %.1f MB (%d bytes), tarball %s\n",
		ref, float64(fi.Size())/1e6, float64(size)/1e6, size, tarPath)
	return nil
}

// Build makes the image: empty base, one layer with binary at /ingest (mode
// 0755, owned by root so the running user cannot replace it), entrypoint
// /ingest, user 65532. The layer's timestamps are fixed, so the same binary
// gives the same image digest.
func Build(binary, version string) (v1.Image, error) {
	arch, err := staticArch(binary)
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	if err := tw.WriteHeader(&tar.Header{Name: "ingest", Mode: 0o755, Size: int64(len(bin)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.User = User
	cf.Config.Entrypoint = []string{"/ingest"}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":    "ingest",
		"org.opencontainers.image.source":   "https://github.com/ingest-io/ingest",
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
	if version != "" {
		cf.Config.Labels["org.opencontainers.image.version"] = version
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// CompressedSize is what a registry stores and a node pulls: the sum of the
// compressed layers.
func CompressedSize(img v1.Image) (int64, error) {
	layers, err := img.Layers()
	if err != nil {
		return 0, fmt.Errorf("list layers: %w", err)
	}
	var n int64
	for _, l := range layers {
		s, err := l.Size()
		if err != nil {
			return 0, fmt.Errorf("layer size: %w", err)
		}
		n += s
	}
	return n, nil
}

// staticArch checks that binary is a statically linked Linux ELF (an empty
// image has no dynamic loader and no libc) and returns its GOARCH.
func staticArch(binary string) (string, error) {
	f, err := elf.Open(binary)
	if err != nil {
		return "", fmt.Errorf("open binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("binary is dynamically linked: build it with CGO_ENABLED=0")
		}
	}
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return "", fmt.Errorf("binary is not a Linux ELF (OS ABI %v)", f.OSABI)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	}
	return "", fmt.Errorf("binary is for an unsupported machine %v", f.Machine)
}
