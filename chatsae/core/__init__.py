"""The ground floor: option validation and config files, file names and dtypes, devices, locks and ownership
markers, atomic file IO, secret redaction, progress lines, process-group setup. Imports nothing else of chatsae."""
