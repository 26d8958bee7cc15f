package redisstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"wsgateway/internal/redistest"
)

// TestOpenTLS: a rediss:// URL connects when its ca= names the CA that
// signed the server's certificate, and is refused, saying why, when the
// certificate is signed by a CA it was not given; ca= is refused where
// it cannot apply.
func TestOpenTLS(t *testing.T) {
	srv := redistest.NeedTLS(t)
	other, err := redistest.NewTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plain := "redis://" + srv.Addr + "/0"
	for _, tc := range []struct {
		name, url string
		inErr     []string // nil: it connects
	}{
		{"CA trusted", srv.URL(0) + "?ca=" + srv.TLS.CAFile + "&prefix=" + redistest.Prefix(t), nil},
		{"CA trusted, database 3", srv.URL(3) + "?prefix=" + redistest.Prefix(t) + "&ca=" + srv.TLS.CAFile, nil},
		{"another CA", srv.URL(0) + "?ca=" + other.CAFile,
			[]string{"rediss://" + srv.Addr, "certificate signed by unknown authority", "give its CA with ?ca="}},
		{"the system's CAs", srv.URL(0),
			[]string{"certificate signed by unknown authority", "give its CA with ?ca="}},
		{"no TLS to a TLS server", plain, []string{"redis " + plain + ": "}},
		{"ca on redis://", plain + "?ca=" + srv.TLS.CAFile, []string{"ca= is for rediss:// (TLS) URLs"}},
		{"ca missing", srv.URL(0) + "?ca=/nonexistent/ca.pem", []string{"ca: open /nonexistent/ca.pem"}},
		{"ca empty", srv.URL(0) + "?ca=", []string{"ca: open : no such file"}},
		{"ca not PEM", srv.URL(0) + "?ca=" + notPEM, []string{"ca: no PEM certificate in " + notPEM}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, err := Open(ctx, tc.url, zerolog.Nop())
			if tc.inErr != nil {
				if err == nil {
					s.Close()
					t.Fatalf("Open(%s) connected, want an error saying %q", tc.url, tc.inErr)
				}
				for _, want := range tc.inErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Open(%s) = %v, want it to say %q", tc.url, err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%s): %v", tc.url, err)
			}
			defer s.Close()
			// The store works over the connection: an event goes in and
			// comes back.
			ev, err := s.AppendEvent(ctx, "tls", "", []byte(`{"over":"tls"}`))
			if err != nil {
				t.Fatalf("AppendEvent over TLS: %v", err)
			}
			evs, err := s.ReadEvents(ctx, ev.Seq-1, 10, 0)
			if err != nil || len(evs) != 1 || string(evs[0].Data) != `{"over":"tls"}` {
				t.Fatalf("ReadEvents over TLS = %+v, %v", evs, err)
			}
		})
	}
}
