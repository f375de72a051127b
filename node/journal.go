package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/node/fsm"
)

func journalPath(stateDir string) string { return filepath.Join(stateDir, "journal.json") }

// loadJournal reads <state-dir>/journal.json; empty when there is none.
func loadJournal(stateDir string) (fsm.Journal, error) {
	var j fsm.Journal
	data, err := os.ReadFile(journalPath(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return j, fmt.Errorf("read journal: %w", err)
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return j, fmt.Errorf("read journal %s: %w", journalPath(stateDir), err)
	}
	return j, nil
}

// saveJournal rewrites the journal atomically.
func saveJournal(stateDir string, j fsm.Journal) error {
	if err := apply.WriteState(journalPath(stateDir), j); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}
