#!/usr/bin/env bash
# Userspace-mode benchmark (issue 3): the enclave library's gVisor stack in a
# process against TAP mode and the peer (gvproxy + gvforwarder), same run.
# Bulk throughput uses bulkcmd for every config (iperf3 cannot run inside a
# userspace stack); HTTP uses wrk through the published port. No sweeps by
# default (SWEEP=1 adds them). Figures for information.
cd "$(dirname "$0")"
NAME=userspace BULK=bulk EGRESS=0 SWEEP=${SWEEP:-0} \
  CONFIGS=${CONFIGS:-"userspace:65520 quench:65520 peer:65520"} exec ./tunnel.sh
