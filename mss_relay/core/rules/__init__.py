"""One small module per rule family; each rule is a pure function returning a
Verdict when it fires and None when it lets the fact through."""
