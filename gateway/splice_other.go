//go:build !linux

package gateway

// download is the zero-copy path, which exists on Linux only: elsewhere
// every tunnel takes the copy path.
func (t *tunnel) download() error { return errNoSplice }

// splicer is the zero-copy state, which exists on Linux only.
type splicer struct{}

func pipesOpen() int { return 0 }

func setSpliceOff(bool) func() { return func() {} }

func pipesIdle() int { return 0 }
