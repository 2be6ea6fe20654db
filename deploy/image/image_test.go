package main

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestImageRuns builds the image as make image does, reads it back from the
// tarball and the OCI layout, unpacks its file system and runs
// /ingest --version from it.
func TestImageRuns(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ingest")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v0.0.0-imagetest", "-o", bin, "../../cmd/ingest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build ingest: %v\n%s", err, out)
	}
	tarPath, ociDir := filepath.Join(dir, "ingest.tar"), filepath.Join(dir, "oci")
	if err := run(bin, "ingest:test", tarPath, ociDir, "v0.0.0-imagetest"); err != nil {
		t.Fatal(err)
	}

	img, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		t.Fatalf("read tarball: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != User || strings.HasPrefix(cf.Config.User, "0") || cf.Config.User == "root" {
		t.Errorf("user %q, want non-root %q", cf.Config.User, User)
	}
	if got := strings.Join(cf.Config.Entrypoint, " "); got != "/ingest" {
		t.Errorf("entrypoint %q, want /ingest", got)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v0.0.0-imagetest" {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want exactly the binary's", len(layers), err)
	}

	// The layout holds the same image.
	idx, err := layout.ImageIndexFromPath(ociDir)
	if err != nil {
		t.Fatalf("read oci layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("oci index: %v, %v", im, err)
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if im.Manifests[0].Digest != want {
		t.Errorf("oci layout digest %v, tarball %v", im.Manifests[0].Digest, want)
	}

	// Unpack the image's file system and run the binary from it.
	root := filepath.Join(dir, "rootfs")
	unpack(t, mutate.Extract(img), root)
	entries, err := os.ReadDir(root)
	if err != nil || len(entries) != 1 || entries[0].Name() != "ingest" {
		t.Fatalf("rootfs holds %v (%v), want only ingest", entries, err)
	}
	out, err := exec.Command(filepath.Join(root, "ingest"), "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("ingest --version: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "ingest v0.0.0-imagetest ") {
		t.Errorf("ingest --version printed %q", out)
	}
	size, err := CompressedSize(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compressed image %.1f MB", float64(size)/1e6)
}

// slimTarget bounds the slim image's size: its one file, the binary, as
// it is unpacked on a node.
const slimTarget = 20 << 20

// TestSlimImage builds the slim image as make image does (-tags nostorage,
// stripped), runs /ingest from its unpacked file system, and checks that
// it is under slimTarget and serves every tier but storage.
func TestSlimImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ingest-slim")
	build := exec.Command("go", "build", "-trimpath", "-tags", "nostorage", "-ldflags", "-s -w -X main.version=v0.0.0-slimtest", "-o", bin, "../../cmd/ingest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build ingest: %v\n%s", err, out)
	}
	tarPath := filepath.Join(dir, "ingest-slim.tar")
	if err := run(bin, "ingest:test-slim", tarPath, "", "v0.0.0-slimtest"); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		t.Fatalf("read tarball: %v", err)
	}
	root := filepath.Join(dir, "rootfs")
	unpack(t, mutate.Extract(img), root)
	ingest := filepath.Join(root, "ingest")
	fi, err := os.Stat(ingest)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() >= slimTarget {
		t.Errorf("slim image holds %.1f MB, want under %d MB", float64(fi.Size())/(1<<20), slimTarget>>20)
	}

	out, err := exec.Command(ingest, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ingest v0.0.0-slimtest nostorage ") {
		t.Errorf("ingest --version: %v, printed %q", err, out)
	}
	for _, sub := range []string{"frontend", "middletier", "feed"} {
		if out, err := exec.Command(ingest, sub, "--help").CombinedOutput(); err != nil {
			t.Errorf("ingest %s --help: %v\n%s", sub, err, out)
		}
	}
	for _, sub := range []string{"storage", "all"} {
		out, err := exec.Command(ingest, sub).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "not in this build") {
			t.Errorf("ingest %s on the slim image: %v, printed %q; want a refusal", sub, err, out)
		}
	}
	size, err := CompressedSize(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("slim image: %.1f MB unpacked, %.1f MB compressed", float64(fi.Size())/1e6, float64(size)/1e6)
}

func TestBuildRefusesDynamicBinary(t *testing.T) {
	// /bin/sh on a Linux host is dynamically linked; an empty image could
	// not run it.
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh")
	}
	if _, err := Build(sh, ""); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("Build(%s) = %v, want a refusal", sh, err)
	}
}

// unpack writes the regular files of a flattened image tar stream under root.
func unpack(t *testing.T, rc io.ReadCloser, root string) {
	t.Helper()
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("read image fs: %v", err)
		}
		p := filepath.Join(root, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, root+string(filepath.Separator)) {
			t.Fatalf("image fs entry %q escapes the root", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o777)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("unexpected entry %q of type %c", h.Name, h.Typeflag)
		}
	}
}
