package launcher

import "sort"

// pool maps the "resources" onto the launcher's session.Manager: each
// resource host is a service whose slots are its ports, slot i being the
// host's i-th lowest port. The Manager holds which slots are taken; the
// pool only says which host to ask first and which port a slot is. It
// never changes after New, so it needs no lock.
type pool struct {
	hosts []hostPorts // in config order
}

type hostPorts struct {
	host  string
	ports []int // sorted
}

func newPool(resources []Resource) *pool {
	p := &pool{}
	byHost := map[string]int{}
	for _, r := range resources {
		i, ok := byHost[r.Host]
		if !ok {
			i = len(p.hosts)
			byHost[r.Host] = i
			p.hosts = append(p.hosts, hostPorts{host: r.Host})
		}
		for port := r.PortRange[0]; port <= r.PortRange[1]; port++ {
			p.hosts[i].ports = append(p.hosts[i].ports, port)
		}
	}
	for _, hp := range p.hosts {
		sort.Ints(hp.ports)
	}
	return p
}

// counts is the Manager's services: each host and its number of ports.
func (p *pool) counts() map[string]int {
	out := make(map[string]int, len(p.hosts))
	for _, hp := range p.hosts {
		out[hp.host] = len(hp.ports)
	}
	return out
}

// total is the number of ports of every host.
func (p *pool) total() int {
	n := 0
	for _, hp := range p.hosts {
		n += len(hp.ports)
	}
	return n
}

// port is the port of slot idx of host.
func (p *pool) port(host string, idx int) (int, bool) {
	for _, hp := range p.hosts {
		if hp.host == host {
			if idx < 0 || idx >= len(hp.ports) {
				return 0, false
			}
			return hp.ports[idx], true
		}
	}
	return 0, false
}

// order lists the hosts that have a free port, given each host's free
// count: the most free ports first, config order on a tie. The Manager
// hands out a host's lowest free slot, so a launch gets the lowest free
// port of the host with the most free ports.
func (p *pool) order(free map[string]int) []string {
	var out []string
	for _, hp := range p.hosts {
		if free[hp.host] > 0 {
			out = append(out, hp.host)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return free[out[i]] > free[out[j]] })
	return out
}
