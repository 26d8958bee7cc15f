package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"wsgateway/store"
	"wsgateway/store/storetest"
)

func TestStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
