//go:build race

package gateway

// raceBuild: the race detector is on (it drops a quarter of what is put
// back in a sync.Pool).
const raceBuild = true
