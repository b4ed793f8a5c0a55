use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("config field `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("weight `{name}`: expected shape {expected:?}, the file has {found:?}")]
    WeightShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: {message}")]
    Weights { path: String, message: String },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Data(#[from] molclip_data::DataError),
    #[error("step {step}: the {term} is {value} (not finite); training stopped")]
    NonFinite { step: u64, term: String, value: f32 },
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config { field: field.into(), message: message.into() }
    }
}
