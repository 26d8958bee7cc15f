package services_test

import (
	"encoding/json"
	"testing"
	"time"

	"wsgateway/services"
)

// TestRecordPolicy: whether a session is recorded (the operator's
// "record" option wins; a client may ask only where "record" is a client
// option), and the size and age bounds (a positive number, else the
// defaults).
func TestRecordPolicy(t *testing.T) {
	boolOpt, err := services.ParseClientOption("bool")
	if err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	def := services.RecordPolicy{MaxBytes: services.DefaultRecordMaxMB << 20, Keep: services.DefaultRecordKeepDays * day}
	tests := []struct {
		name    string
		options map[string]string
		client  bool // "record" is a client option
		query   map[string]string
		want    services.RecordPolicy
	}{
		{"nothing", nil, false, nil, def},
		{"operator on", map[string]string{"record": "true"}, false, nil, services.RecordPolicy{On: true, MaxBytes: def.MaxBytes, Keep: def.Keep}},
		{"operator on, quoted", map[string]string{"record": `"true"`}, false, nil, services.RecordPolicy{On: true, MaxBytes: def.MaxBytes, Keep: def.Keep}},
		{"operator off beats the client", map[string]string{"record": "false"}, true, map[string]string{"record": "true"}, def},
		{"client asks, allowed", nil, true, map[string]string{"record": "true"}, services.RecordPolicy{On: true, MaxBytes: def.MaxBytes, Keep: def.Keep}},
		{"client asks, not allowed", nil, false, map[string]string{"record": "true"}, def},
		{"client says false", nil, true, map[string]string{"record": "false"}, def},
		{"bounds", map[string]string{"record_max_mb": "1.5", "record_keep_days": `"2"`}, false, nil,
			services.RecordPolicy{MaxBytes: 3 << 19, Keep: 2 * day}},
		{"fractional day", map[string]string{"record_keep_days": "0.5"}, false, nil, services.RecordPolicy{MaxBytes: def.MaxBytes, Keep: day / 2}},
		{"zero is the default", map[string]string{"record_max_mb": "0", "record_keep_days": "0"}, false, nil, def},
		{"unreadable is the default", map[string]string{"record_max_mb": `"lots"`}, false, nil, def},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &services.Service{Name: "s", Options: map[string]json.RawMessage{}, ClientOptions: map[string]*services.ClientOption{}}
			for k, v := range tt.options {
				s.Options[k] = json.RawMessage(v)
			}
			if tt.client {
				s.ClientOptions["record"] = boolOpt
			}
			if got := s.Record(tt.query); got != tt.want {
				t.Fatalf("%+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestSeconds: the options in seconds, as the gateway reads them (a
// number or a numeric string; absent or 0 is none).
func TestSeconds(t *testing.T) {
	s := &services.Service{Options: map[string]json.RawMessage{
		"a": json.RawMessage(`30`), "b": json.RawMessage(`"2.5"`), "c": json.RawMessage(`0`)}}
	for key, want := range map[string]time.Duration{"a": 30 * time.Second, "b": 2500 * time.Millisecond, "c": 0, "absent": 0} {
		if got := s.Seconds(key); got != want {
			t.Errorf("%s: %v, want %v", key, got, want)
		}
	}
}
