package attestation

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"unsafe"

	"github.com/hf/nsm"
	"golang.org/x/sys/unix"
)

// nsmDevice is the NSM character device inside a Nitro Enclave.
const nsmDevice = "/dev/nsm"

func openNSM() (NSMSession, error) {
	s, err := nsm.OpenSession(nsm.Options{
		Open:    func() (nsm.FileDescriptor, error) { return os.Open(nsmDevice) },
		Syscall: nsm.DefaultOptions.Syscall,
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNoNSM, err)
		}
		return nil, fmt.Errorf("attestation: open %s: %w", nsmDevice, err)
	}
	return s, nil
}

// seedKernel adds buf to the kernel pool through device with RNDADDENTROPY,
// crediting 8 bits per byte; if that is refused it falls back to write(2),
// which mixes without crediting.
func seedKernel(device string, buf []byte) error {
	f, err := os.OpenFile(device, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("attestation: seed entropy: %w", err)
	}
	defer f.Close()

	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(buf))
	defer clear(info)
	binary.NativeEndian.PutUint32(info[0:4], uint32(8*len(buf)))
	binary.NativeEndian.PutUint32(info[4:8], uint32(len(buf)))
	copy(info[8:], buf)

	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("attestation: seed entropy: %w", err)
	}
	var errno unix.Errno
	if cerr := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	}); cerr != nil {
		return fmt.Errorf("attestation: seed entropy: %w", cerr)
	}
	if errno == 0 {
		return nil
	}
	if _, werr := f.Write(buf); werr != nil {
		return fmt.Errorf("attestation: seed entropy: RNDADDENTROPY on %s: %w; write: %w", device, errno, werr)
	}
	return fmt.Errorf("attestation: seed entropy: %w: RNDADDENTROPY on %s: %w", ErrEntropyNotCredited, device, errno)
}
