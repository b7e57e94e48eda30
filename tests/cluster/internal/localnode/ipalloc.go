package localnode

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
)

// ipAllocator hands out pod IPs from a loopback range. It walks forward
// through the range before reusing an address, so a new pod rarely gets
// the address of one that just went away.
type ipAllocator struct {
	mu    sync.Mutex
	base  uint32
	size  uint32
	next  uint32
	inUse map[uint32]bool
}

func newIPAllocator(cidr *net.IPNet) *ipAllocator {
	ones, bits := cidr.Mask.Size()
	return &ipAllocator{
		base:  binary.BigEndian.Uint32(cidr.IP.To4()),
		size:  uint32(1) << (bits - ones),
		next:  2, // skip the network address and .1
		inUse: map[uint32]bool{},
	}
}

func (a *ipAllocator) offset(ip string) (uint32, bool) {
	p := net.ParseIP(ip).To4()
	if p == nil {
		return 0, false
	}
	off := binary.BigEndian.Uint32(p) - a.base
	return off, off < a.size
}

// claim marks ip as used if it is in the range and free (a pod keeping its
// address across a local node restart).
func (a *ipAllocator) claim(ip string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	off, ok := a.offset(ip)
	if !ok || off < 2 || off == a.size-1 || a.inUse[off] {
		return false
	}
	a.inUse[off] = true
	return true
}

func (a *ipAllocator) allocate() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := uint32(0); i < a.size; i++ {
		off := a.next
		a.next++
		if a.next >= a.size-1 {
			a.next = 2
		}
		if off < 2 || off >= a.size-1 || a.inUse[off] {
			continue
		}
		a.inUse[off] = true
		b := make(net.IP, 4)
		binary.BigEndian.PutUint32(b, a.base+off)
		return b.String(), nil
	}
	return "", fmt.Errorf("pod IP range exhausted")
}

func (a *ipAllocator) release(ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if off, ok := a.offset(ip); ok {
		delete(a.inUse, off)
	}
}
