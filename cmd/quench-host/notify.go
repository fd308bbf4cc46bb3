package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/quenchnet/quench/host"
)

// systemd service notification (sd_notify), when quench-host runs as a
// Type=notify unit (NOTIFY_SOCKET set); without it every call is a no-op.
// READY=1 once every listener is up and every port published, so units
// ordered after quench-host (the one that runs nitro-cli run-enclave) start
// when enclaves can connect; STATUS= with the enclaves and ports; the
// watchdog (WatchdogSec=) pinged only while the host answers; STOPPING=1
// when the drain starts.

// statusInterval is how often STATUS= is refreshed without a watchdog.
const statusInterval = 10 * time.Second

// notifyTimeout bounds one notification. go-systemd's SdNotify writes
// without a deadline: a notification socket whose reader stopped (its queue
// holds 10 datagrams by default) would block quench-host's exit for good.
const notifyTimeout = time.Second

func notify(logger *slog.Logger, state string) {
	if err := sdNotify(state); err != nil {
		logger.Warn("systemd notification failed", "state", strings.ReplaceAll(state, "\n", " "), "err", err)
	}
}

// sdNotify sends state to $NOTIFY_SOCKET (nothing when it is unset), as
// sd_notify(3) does: one datagram; a name starting with @ is abstract.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetWriteDeadline(time.Now().Add(notifyTimeout)); err != nil {
		return err
	}
	_, err = c.Write([]byte(state))
	return err
}

func notifyStatus(h *host.Host) string {
	st := h.Stats()
	return fmt.Sprintf("STATUS=%d enclave(s) connected, %d port(s) published", st.Enclaves, len(h.Ports()))
}

// notifyReady sends READY=1 and then, until ctx ends, STATUS= and the
// watchdog pings. The ping follows a call into the host (its counters and
// ports, which take its locks), so a wedged host stops pinging and systemd
// restarts it.
func notifyReady(ctx context.Context, logger *slog.Logger, h *host.Host) {
	notify(logger, "READY=1\n"+notifyStatus(h))
	every := statusInterval
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		logger.Warn("systemd watchdog settings ignored", "err", err)
	}
	if wd > 0 {
		every = wd / 2
		logger.Info("systemd watchdog", "interval", wd)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		state := notifyStatus(h)
		if wd > 0 {
			state = "WATCHDOG=1\n" + state
		}
		notify(logger, state)
	}
}
