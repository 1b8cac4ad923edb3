//! plexusctl: inject, check, traces, diagnose.
