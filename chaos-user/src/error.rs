//! Errors a person can act on, each mapped to the exit code the CLI promises.

/// Exit codes: 0 done, 1 unexpected failure, 2 bad input, 3 this machine cannot do it.
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNSUPPORTED: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments, values or files: the user can fix the command line.
    #[error("{0}")]
    Usage(String),
    /// This machine cannot do it: privileges, cgroup2, a kernel feature.
    #[error("{0}")]
    Unsupported(String),
    /// Anything else; the message carries its context chain.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// The error, placed: `at` ("faults.toml:12: ", or "" for no place) before its message.
    pub fn at(self, at: &str) -> Error {
        if at.is_empty() {
            return self;
        }
        match self {
            Error::Usage(m) => Error::Usage(format!("{at}{m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{at}{m}")),
            Error::Other(e) => Error::Other(e.context(at.trim_end_matches(": ").to_string())),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Unsupported(_) => EXIT_UNSUPPORTED,
            Error::Other(_) => EXIT_FAILURE,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Error::Usage` from a format string.
#[macro_export]
macro_rules! usage {
    ($($t:tt)*) => { $crate::error::Error::Usage(format!($($t)*)) };
}

/// `Error::Unsupported` from a format string.
#[macro_export]
macro_rules! unsupported {
    ($($t:tt)*) => { $crate::error::Error::Unsupported(format!($($t)*)) };
}

/// An error and its sources on one line ("`bpf_link_create` failed: Invalid argument (os error 22)").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s += ": ";
            s += &t;
        }
        cur = c.source();
    }
    s
}
