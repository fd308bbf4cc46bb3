package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/quenchnet/quench/internal/sandbox"
)

// selfExe is quench-enclave's own binary, which starts a sandboxed app
// (sandbox.Arg): /proc/self/exe where there is one, the very file this
// process runs, even if its path was replaced or removed since.
func selfExe() (string, error) {
	if _, err := os.Stat("/proc/self/exe"); err == nil {
		return "/proc/self/exe", nil
	}
	return os.Executable()
}

// appCommand is the app's command: the app itself (as o.appCred, if set),
// or, with the sandbox, quench-enclave run again to install the filter,
// change to o.appCred's user and execute the app (Go cannot run code
// between fork and exec). The app's path is looked up here, so that a
// missing command is reported as before.
func appCommand(o *options) (*exec.Cmd, error) {
	if !o.appSandbox {
		cmd := exec.Command(o.appArgs[0], o.appArgs[1:]...)
		cmd.SysProcAttr = appSysProcAttr()
		cmd.SysProcAttr.Credential = o.appCred
		return cmd, nil
	}
	path, err := exec.LookPath(o.appArgs[0])
	if err != nil {
		return nil, err
	}
	self, err := selfExe()
	if err != nil {
		return nil, fmt.Errorf("sandbox: own binary: %w", err)
	}
	user := "-"
	if c := o.appCred; c != nil {
		user = fmt.Sprintf("%d:%d", c.Uid, c.Gid)
	}
	args := append([]string{sandbox.Arg, user, path}, o.appArgs...)
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = appSysProcAttr()
	return cmd, nil
}

// lookupAppUser parses -app-user: USER or USER:GROUP, each a name or a
// numeric ID. Without GROUP, the user's primary group (a numeric user
// without a passwd entry: its own number).
func lookupAppUser(spec string) (*syscall.Credential, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	if name == "" || hasGroup && group == "" {
		return nil, fmt.Errorf("%q: want USER or USER:GROUP", spec)
	}
	var uid, gid uint64
	u, err := user.Lookup(name)
	if err != nil {
		u, err = user.LookupId(name)
	}
	switch {
	case err == nil:
		// os/user without cgo takes any integer from passwd: an error
		// here must not leave 0 (root).
		if uid, err = parseID(u.Uid); err == nil {
			gid, err = parseID(u.Gid)
		}
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", name, err)
		}
	default:
		n, perr := parseID(name)
		var numErr *strconv.NumError
		if errors.As(perr, &numErr) {
			// Not a number: err is os/user's about the name as an ID
			// ("strconv.Atoi: parsing ...").
			return nil, fmt.Errorf("user %q: not a user name or number", name)
		}
		if perr != nil {
			return nil, fmt.Errorf("user %q: %w", name, perr)
		}
		uid, gid = n, n
	}
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			g, err = user.LookupGroupId(group)
		}
		if err == nil {
			if gid, err = parseID(g.Gid); err != nil {
				return nil, fmt.Errorf("group %q: %w", group, err)
			}
		} else if gid, err = parseID(group); err != nil {
			return nil, fmt.Errorf("group %q: not a group name or number", group)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// parseID parses a user or group ID: 32 bits, and not 4294967295 ((uid_t)-1
// means "no change" to the kernel, and no one).
func parseID(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err == nil && n == 1<<32-1 {
		err = fmt.Errorf("ID %s is not a user's or group's", s)
	}
	return n, err
}
