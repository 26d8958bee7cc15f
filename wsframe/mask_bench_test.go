package wsframe

import "testing"

func BenchmarkMaskBytes(b *testing.B) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	key := [4]byte{1, 2, 3, 4}
	for i := 0; i < b.N; i++ {
		maskBytes(key, 1, buf)
	}
}
