// Package logging builds the node agent's logger: lines of the same shape,
// flags and level names as the controller's (Flux's runtime logger), on zap.
//
// The controller logs through controller-runtime's zap setup, which the
// agent must not link; this package configures zap the same way (JSON or
// console encoding, ISO 8601 times, levels trace, debug, info, error,
// stack traces of errors at trace and debug) and puts a log/slog handler
// in front of it, so the agent's code logs with the standard library.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options are the logging flags, as the controller names them.
type Options struct {
	Encoding string // json or console
	Level    string // trace, debug, info or error
}

// Encodings and levels, as --log-encoding and --log-level take them.
var (
	Encodings = []string{"json", "console"}
	Levels    = []string{"trace", "debug", "info", "error"}
)

// Defaults of Options.
const (
	DefaultEncoding = "json"
	DefaultLevel    = "info"
)

// levels maps level names to zap's: trace is below debug, as in Flux.
var levels = map[string]zapcore.Level{
	"trace": zapcore.DebugLevel - 1,
	"debug": zapcore.DebugLevel,
	"info":  zapcore.InfoLevel,
	"error": zapcore.ErrorLevel,
}

// New returns a logger writing to w.
func New(w io.Writer, o Options) (*slog.Logger, error) {
	if o.Encoding == "" {
		o.Encoding = DefaultEncoding
	}
	if o.Level == "" {
		o.Level = DefaultLevel
	}
	level, ok := levels[o.Level]
	if !ok {
		return nil, fmt.Errorf("unknown log level %q: want one of %s", o.Level, strings.Join(Levels, ", "))
	}
	var enc zapcore.Encoder
	switch o.Encoding {
	case "json":
		c := zap.NewProductionEncoderConfig()
		c.EncodeTime = zapcore.ISO8601TimeEncoder
		c.EncodeLevel = lowercaseLevel
		enc = zapcore.NewJSONEncoder(c)
	case "console":
		c := zap.NewDevelopmentEncoderConfig()
		c.EncodeTime = zapcore.ISO8601TimeEncoder
		c.EncodeLevel = capitalLevel
		enc = zapcore.NewConsoleEncoder(c)
	default:
		return nil, fmt.Errorf("unknown log encoding %q: want one of %s", o.Encoding, strings.Join(Encodings, ", "))
	}
	// Stack traces of errors at trace and debug, as Flux's logger.
	stack := zapcore.PanicLevel
	if level <= zapcore.DebugLevel {
		stack = zapcore.ErrorLevel
	}
	sink := zapcore.AddSync(w)
	z := zap.New(zapcore.NewCore(enc, sink, level), zap.ErrorOutput(sink), zap.AddStacktrace(stack),
		zap.AddCallerSkip(3)) // stacks start at the caller of slog, past the handler
	return slog.New(&handler{z: z}), nil
}

func lowercaseLevel(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	if l < zapcore.DebugLevel {
		enc.AppendString("trace")
		return
	}
	zapcore.LowercaseLevelEncoder(l, enc)
}

func capitalLevel(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	if l < zapcore.DebugLevel {
		enc.AppendString("TRACE")
		return
	}
	zapcore.CapitalLevelEncoder(l, enc)
}

// zapLevel maps slog's levels to zap's: below debug is trace.
func zapLevel(l slog.Level) zapcore.Level {
	switch {
	case l < slog.LevelDebug:
		return zapcore.DebugLevel - 1
	case l < slog.LevelInfo:
		return zapcore.DebugLevel
	case l < slog.LevelWarn:
		return zapcore.InfoLevel
	case l < slog.LevelError:
		return zapcore.WarnLevel
	}
	return zapcore.ErrorLevel
}

// handler is a slog.Handler writing through zap.
type handler struct {
	z      *zap.Logger
	fields []zapcore.Field // from WithAttrs and WithGroup
}

func (h *handler) Enabled(_ context.Context, l slog.Level) bool {
	return h.z.Core().Enabled(zapLevel(l))
}

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	ce := h.z.Check(zapLevel(r.Level), r.Message)
	if ce == nil {
		return nil
	}
	if !r.Time.IsZero() {
		ce.Time = r.Time
	}
	fields := slices.Clone(h.fields)
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, a)
		return true
	})
	ce.Write(fields...)
	return nil
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := slices.Clone(h.fields)
	for _, a := range attrs {
		fields = appendAttr(fields, a)
	}
	return &handler{z: h.z, fields: fields}
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &handler{z: h.z, fields: append(slices.Clone(h.fields), zap.Namespace(name))}
}

// appendAttr appends a as zap fields.
func appendAttr(fields []zapcore.Field, a slog.Attr) []zapcore.Field {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fields
	}
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		return append(fields, zap.String(a.Key, v.String()))
	case slog.KindInt64:
		return append(fields, zap.Int64(a.Key, v.Int64()))
	case slog.KindUint64:
		return append(fields, zap.Uint64(a.Key, v.Uint64()))
	case slog.KindFloat64:
		return append(fields, zap.Float64(a.Key, v.Float64()))
	case slog.KindBool:
		return append(fields, zap.Bool(a.Key, v.Bool()))
	case slog.KindDuration:
		return append(fields, zap.Duration(a.Key, v.Duration()))
	case slog.KindTime:
		return append(fields, zap.Time(a.Key, v.Time()))
	case slog.KindGroup:
		attrs := v.Group()
		if a.Key == "" { // inline, as slog does
			for _, g := range attrs {
				fields = appendAttr(fields, g)
			}
			return fields
		}
		return append(fields, zap.Object(a.Key, group(attrs)))
	}
	if err, ok := v.Any().(error); ok {
		return append(fields, zap.NamedError(a.Key, err))
	}
	return append(fields, zap.Any(a.Key, v.Any()))
}

// group encodes slog attributes as a nested object.
type group []slog.Attr

func (g group) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for _, f := range appendAttr(nil, slog.Attr{Value: slog.GroupValue(g...)}) {
		f.AddTo(enc)
	}
	return nil
}
