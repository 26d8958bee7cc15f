package launcher

import (
	"fmt"
	"sort"
)

// pool holds the "resources": one set of ports per host. It is not safe
// for concurrent use; the Launcher's mutex guards it.
type pool struct {
	hosts []*hostPool // in config order
}

type hostPool struct {
	host string
	free []int // sorted
	used map[int]bool
}

func newPool(resources []Resource) *pool {
	p := &pool{}
	byHost := map[string]*hostPool{}
	for _, r := range resources {
		hp := byHost[r.Host]
		if hp == nil {
			hp = &hostPool{host: r.Host, used: map[int]bool{}}
			byHost[r.Host] = hp
			p.hosts = append(p.hosts, hp)
		}
		for port := r.PortRange[0]; port <= r.PortRange[1]; port++ {
			hp.free = append(hp.free, port)
		}
	}
	for _, hp := range p.hosts {
		sort.Ints(hp.free)
	}
	return p
}

// take hands out a port of the host with the most free ports (the first
// such host in config order on a tie), its lowest free port.
func (p *pool) take() (string, int, bool) {
	var best *hostPool
	for _, hp := range p.hosts {
		if len(hp.free) > 0 && (best == nil || len(hp.free) > len(best.free)) {
			best = hp
		}
	}
	if best == nil {
		return "", 0, false
	}
	port := best.free[0]
	best.free = best.free[1:]
	best.used[port] = true
	return best.host, port, true
}

// put returns a port taken with take; anything else is an error.
func (p *pool) put(host string, port int) error {
	for _, hp := range p.hosts {
		if hp.host != host {
			continue
		}
		if !hp.used[port] {
			return fmt.Errorf("port %d of host %s was not in use", port, host)
		}
		delete(hp.used, port)
		i := sort.SearchInts(hp.free, port)
		hp.free = append(hp.free, 0)
		copy(hp.free[i+1:], hp.free[i:])
		hp.free[i] = port
		return nil
	}
	return fmt.Errorf("host %s is not in the resources", host)
}

// counts reports free and total ports.
func (p *pool) counts() (free, total int) {
	for _, hp := range p.hosts {
		free += len(hp.free)
		total += len(hp.free) + len(hp.used)
	}
	return free, total
}
