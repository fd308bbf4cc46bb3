package policy

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/internal/dnswire"
)

// ErrNotQuery is returned by RefuseQuery for a message that is not a DNS
// query with 1 to MaxQuestions questions.
var ErrNotQuery = errors.New("policy: not a DNS query")

// MaxQuestions bounds the questions of a query RefuseQuery reads. A
// resolver asks one (RFC 9619); thousands fit in 64 KB, each a 2-byte
// pointer to a name of up to 255 bytes, and cost the egress filter, on
// the path of every frame, over 400 times the message's size and a tenth of a
// second to read and refuse.
const MaxQuestions = 16

// RefuseQuery parses the DNS query msg. When p allows every name it asks
// about (AllowName), it returns a nil answer; otherwise an NXDOMAIN answer
// to it, to be given in place of the server's, and the first name refused.
// A message that is not a query with 1 to MaxQuestions questions is an
// error wrapping ErrNotQuery.
func (p *Policy) RefuseQuery(msg []byte) (answer []byte, refused string, err error) {
	return RefuseQuery(msg, p.AllowName)
}

// RefuseQuery is Policy.RefuseQuery with allow in place of AllowName.
func RefuseQuery(msg []byte, allow func(name string) bool) (answer []byte, refused string, err error) {
	var parser dnsmessage.Parser
	h, err := parser.Start(msg)
	if err != nil || h.Response {
		return nil, "", fmt.Errorf("%w: %v", ErrNotQuery, err)
	}
	if n := binary.BigEndian.Uint16(msg[4:]); n > MaxQuestions {
		return nil, "", fmt.Errorf("%w: %d questions", ErrNotQuery, n)
	}
	qs, err := parser.AllQuestions()
	if err != nil || len(qs) == 0 {
		return nil, "", fmt.Errorf("%w: no questions (%v)", ErrNotQuery, err)
	}
	for _, q := range qs {
		if name := q.Name.String(); !allow(name) {
			refused = name
			break
		}
	}
	if refused == "" {
		return nil, "", nil
	}
	answer, err = dnswire.Reply(h, qs, dnsmessage.RCodeNameError)
	return answer, refused, err
}
