//go:build !linux

package proxy

// quickAck is Linux's TCP_QUICKACK; elsewhere the ACK goes out when the
// kernel decides.
func (uc *upConn) quickAck() {}
