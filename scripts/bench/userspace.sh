#!/usr/bin/env bash
# Userspace-mode benchmark (issue 3): the enclave library's gVisor stack in a
# process against TAP mode and the peer (gvproxy + gvforwarder), same run.
# Bulk throughput uses bulkcmd for every config (iperf3 cannot run inside a
# userspace stack); HTTP uses wrk through the published port.
cd "$(dirname "$0")"
BULK=bulk EGRESS=0 NAME=userspace CONFIGS=${CONFIGS:-"userspace:65520 quench:65520 peer:65520 peer:1500"} exec ./tunnel.sh
