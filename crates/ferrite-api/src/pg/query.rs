//! Simple and extended query: statements to the engine, answers back as rows.
//!
//! Parse plans the statement ([`QueryEngine::prepare`]) or recognises a session statement
//! ([`Command`]); Describe reports the placeholders' types and the answer's columns; Bind's
//! values are decoded ([`params`](super::params)) and bound by the engine; Execute streams
//! the answer batch by batch, each batch encoded as it arrives ([`RowEncoder`]). Simple
//! queries take the same path, statement by statement, answered in text.
//!
//! Engine errors become PostgreSQL errors with their SQLSTATE ([`query_error`]); the
//! session goes on after any of them.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use ferrite_query::{Prepared, QueryEngine, QueryError, QueryStream, ScalarValue};
use futures_util::{Sink, Stream, StreamExt, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use tokio_util::sync::CancellationToken;

use super::command::{self, Command};
use super::encode::{RowEncoder, pg_type};
use super::params;
use super::session::Session;

/// A parsed statement as the portal store keeps it.
#[derive(Clone, Debug)]
pub(crate) enum Statement {
    /// A query for the engine.
    Query(Arc<Prepared>),
    /// A statement the session answers itself.
    Command(Command),
}

/// Plans statements for Parse.
pub(crate) struct Parser {
    engine: Arc<QueryEngine>,
}

impl Parser {
    async fn parse(&self, sql: &str) -> PgWireResult<Statement> {
        match command::classify(sql) {
            Ok(Some(c)) => return Ok(Statement::Command(c)),
            Ok(None) => {}
            Err(message) => return Err(user_error("42704", message)),
        }
        let prepared = self.engine.prepare(sql).await.map_err(query_error)?;
        Ok(Statement::Query(Arc::new(prepared)))
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.parse(sql).await.map(Some)
    }

    fn get_parameter_types(&self, stmt: &Statement) -> PgWireResult<Vec<Type>> {
        Ok(match stmt {
            Statement::Query(p) => p
                .param_types()
                .iter()
                .map(|t| params::param_pg_type(t.as_ref()))
                .collect(),
            Statement::Command(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        stmt: &Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(fields(stmt, format))
    }
}

/// Format of result column or parameter `i`; text where the client named fewer formats.
fn format_for(format: Option<&Format>, i: usize) -> FieldFormat {
    match format {
        None | Some(Format::UnifiedText) => FieldFormat::Text,
        Some(Format::UnifiedBinary) => FieldFormat::Binary,
        Some(Format::Individual(codes)) => codes
            .get(i)
            .map_or(FieldFormat::Text, |c| FieldFormat::from(*c)),
    }
}

/// The columns `stmt` answers with, in `format`.
fn fields(stmt: &Statement, format: Option<&Format>) -> Vec<FieldInfo> {
    let text = |name: &str| {
        vec![FieldInfo::new(
            name.to_owned(),
            None,
            None,
            Type::TEXT,
            format_for(format, 0),
        )]
    };
    match stmt {
        Statement::Query(p) => p
            .schema()
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FieldInfo::new(
                    f.name().clone(),
                    None,
                    None,
                    pg_type(f.data_type()),
                    format_for(format, i),
                )
            })
            .collect(),
        Statement::Command(Command::Show { name, .. }) => text(name),
        Statement::Command(Command::Version) => text("version"),
        Statement::Command(_) => Vec::new(),
    }
}

/// Both query handlers: one per listener, shared by its connections.
pub(crate) struct Queries {
    engine: Arc<QueryEngine>,
    parser: Arc<Parser>,
}

impl Queries {
    pub(crate) fn new(engine: Arc<QueryEngine>) -> Self {
        Self {
            parser: Arc::new(Parser {
                engine: Arc::clone(&engine),
            }),
            engine,
        }
    }

    /// Run `stmt` with `values` bound, answering in `format`.
    async fn run(
        &self,
        session: &Session,
        stmt: &Statement,
        values: Vec<ScalarValue>,
        format: Option<&Format>,
    ) -> PgWireResult<Response> {
        if !session.principal.can(ferrite_fleet::Permission::Query) {
            return Err(user_error(
                "42501",
                format!("the {:?} role may not run queries", session.principal.role),
            ));
        }
        let prepared = match stmt {
            Statement::Query(p) => p,
            Statement::Command(c) => return Ok(answer_command(c, fields(stmt, format))),
        };
        let cancel = session.start_query();
        let stream = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(cancelled()),
            s = self.engine.execute(prepared, values) => s.map_err(query_error)?,
        };
        let fields = Arc::new(fields(stmt, format));
        let encoder = RowEncoder::new(fields.iter().map(FieldInfo::format).collect());
        Ok(Response::Query(QueryResponse::new(
            fields,
            rows(stream, encoder, cancel),
        )))
    }
}

fn answer_command(command: &Command, fields: Vec<FieldInfo>) -> Response {
    let one_row = |value: String| {
        let fields = Arc::new(fields);
        let mut encoder = pgwire::api::results::DataRowEncoder::new(Arc::clone(&fields));
        let row = encoder.encode_field(&value).map(|()| encoder.take_row());
        Response::Query(QueryResponse::new(fields, stream::iter([row])))
    };
    match command {
        Command::Set => Response::Execution(Tag::new("SET")),
        Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
        Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
        Command::Tag(tag) => Response::Execution(Tag::new(tag)),
        Command::Show { value, .. } => one_row(value.clone()),
        Command::Version => one_row(command::version_string()),
    }
}

/// The answer's rows: each batch encoded when the engine yields it, so memory holds one
/// batch, not the answer. A cancel (CancelRequest) ends it with 57014.
fn rows(
    stream: QueryStream,
    encoder: RowEncoder,
    cancel: CancellationToken,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    stream::unfold(Some((stream, encoder, cancel)), |state| async move {
        let (mut stream, encoder, cancel) = state?;
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => Some(Err(cancelled())),
            b = stream.next() => b.map(|r| r.map_err(query_error)),
        };
        match next? {
            Ok(batch) => match encoder.encode(&batch) {
                Ok(rows) => Some((Ok(rows), Some((stream, encoder, cancel)))),
                Err(e) => Some((
                    Err(user_error("XX000", format!("encoding the answer: {e}"))),
                    None,
                )),
            },
            Err(e) => Some((Err(e), None)),
        }
    })
    .flat_map(|batch: PgWireResult<Vec<DataRow>>| match batch {
        Ok(rows) => stream::iter(rows.into_iter().map(Ok)).left_stream(),
        Err(e) => stream::iter([Err(e)]).right_stream(),
    })
}

fn session<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Session>()
        .ok_or_else(|| user_error("08P01", "the session is not authenticated".to_owned()))
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let mut out = Vec::new();
        for sql in command::split_statements(query) {
            let answer = match self.parser.parse(sql).await {
                Ok(stmt) => self.run(&session, &stmt, Vec::new(), None).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => out.push(r),
                Err(e) => {
                    // Later statements of the string are not run, as in PostgreSQL.
                    out.push(Response::Error(Box::new(ErrorInfo::from(e))));
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let stored = &portal.statement;
        let inferred = match &stored.statement {
            Statement::Query(p) => p.param_types().to_vec(),
            Statement::Command(_) => Vec::new(),
        };
        let mut values = Vec::with_capacity(portal.parameters.len());
        for (i, raw) in portal.parameters.iter().enumerate() {
            // The client's type from Parse wins; else what the planner inferred.
            let ty = stored
                .parameter_types
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| params::param_pg_type(inferred.get(i).and_then(Option::as_ref)));
            let format = format_for(Some(&portal.parameter_format), i);
            let value = params::decode(i, raw.as_ref(), format, &ty)
                .map_err(|e| user_error("22P02", e.to_string()))?;
            values.push(value);
        }
        self.run(
            &session,
            &stored.statement,
            values,
            Some(&portal.result_column_format),
        )
        .await
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

fn cancelled() -> PgWireError {
    user_error(
        "57014",
        "canceling statement due to user request".to_owned(),
    )
}

/// An engine error as a PostgreSQL error with its SQLSTATE.
pub(crate) fn query_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::Syntax(_) => "42601",
        QueryError::Unknown(m) if m.contains("table '") => "42P01",
        QueryError::Unknown(_) => "42703",
        QueryError::Unsupported(_) => "0A000",
        QueryError::NotAllowed(_) => "25006",
        QueryError::Timeout(_) => "57014",
        QueryError::TooManyRows(_) => "54000",
        QueryError::ResourcesExhausted(_) => "53200",
        QueryError::Internal(_) => {
            tracing::error!(error = %e, "pgwire query failed");
            "XX000"
        }
        QueryError::Invalid(_) => "42000",
    };
    let message = e.to_string();
    let mut info = ErrorInfo::new("ERROR".to_owned(), code.to_owned(), message);
    if info.message.contains("pg_catalog") {
        info.hint = Some(
            "Ferrite has no pg_catalog (psql's \\d commands use it); \
             list tables and columns from information_schema.tables and information_schema.columns"
                .to_owned(),
        );
    }
    PgWireError::UserError(Box::new(info))
}
