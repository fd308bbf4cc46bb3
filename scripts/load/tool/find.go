package tool

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Packages of the load tools and the module that pins their versions.
const (
	BombardierPackage = "github.com/codesenberg/bombardier"
	BatonPackage      = "github.com/americanexpress/baton"
	ToolsModule       = "github.com/quenchnet/quench/scripts"
)

// BuildConfig configures Build.
type BuildConfig struct {
	// Package is the main package to build, e.g. BombardierPackage.
	// Required.
	Package string
	// ModuleDir is the directory of the tools module (ToolsModule).
	// Default: found by FindModule from the working directory.
	ModuleDir string
	// CacheDir is where binaries are kept between runs.
	// Default: $XDG_CACHE_HOME/quench-load (os.UserCacheDir).
	CacheDir string
	// Go is the go command. Default: "go".
	Go string
	// Timeout bounds the build. Default: 5m.
	Timeout time.Duration
	// Logger receives a message when a binary is built. Default: discard.
	Logger *slog.Logger
}

// Build returns the path of the binary of cfg.Package built from the tools
// module into the cache directory. It builds only when the cached binary is
// missing or older than the module's go.mod or go.sum.
func Build(ctx context.Context, cfg BuildConfig) (string, error) {
	if cfg.Package == "" {
		return "", errors.New("tool: build: empty Package")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Go == "" {
		cfg.Go = "go"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	if cfg.ModuleDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("tool: build: %w", err)
		}
		if cfg.ModuleDir, err = FindModule(wd); err != nil {
			return "", err
		}
	}
	if cfg.CacheDir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("tool: build: %w", err)
		}
		cfg.CacheDir = filepath.Join(d, "quench-load")
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("tool: build: %w", err)
	}
	bin := filepath.Join(cfg.CacheDir, filepath.Base(cfg.Package))
	if fresh(bin, filepath.Join(cfg.ModuleDir, "go.mod"), filepath.Join(cfg.ModuleDir, "go.sum")) {
		return bin, nil
	}
	tmp := fmt.Sprintf("%s.tmp%d", bin, os.Getpid())
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cfg.Go, "build", "-o", tmp, cfg.Package)
	cmd.Dir = cfg.ModuleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("tool: build %s in %s: %w: %s", cfg.Package, cfg.ModuleDir, err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, bin); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("tool: build: %w", err)
	}
	cfg.Logger.Info("built load tool", "package", cfg.Package, "path", bin, "module", cfg.ModuleDir)
	return bin, nil
}

// fresh reports whether bin exists and is newer than every dep that exists.
func fresh(bin string, deps ...string) bool {
	bi, err := os.Stat(bin)
	if err != nil {
		return false
	}
	for _, d := range deps {
		if di, err := os.Stat(d); err == nil && di.ModTime().After(bi.ModTime()) {
			return false
		}
	}
	return true
}

// FindModule returns the directory of the tools module (ToolsModule):
// start or one of its parents, or a "scripts" directory in one of them.
func FindModule(start string) (string, error) {
	dir, err := filepath.Abs(start)
	if err != nil {
		return "", fmt.Errorf("tool: %w", err)
	}
	for {
		for _, cand := range []string{dir, filepath.Join(dir, "scripts")} {
			if modulePath(filepath.Join(cand, "go.mod")) == ToolsModule {
				return cand, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("tool: no %s module at or above %s; pass the tool paths", ToolsModule, start)
		}
		dir = parent
	}
}

func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Version returns the module version of pkg recorded in the binary at path
// ("v1.2.6"), or "" when the binary holds no build information for it.
func Version(path, pkg string) string {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return ""
	}
	if info.Main.Path != "" && strings.HasPrefix(pkg, info.Main.Path) && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	for _, d := range info.Deps {
		if pkg == d.Path || strings.HasPrefix(pkg, d.Path+"/") {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}
