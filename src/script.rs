//! The Rhai host: one sandboxed engine per project, the project's compiled
//! scripts, and calling their callbacks under per-call limits.
//!
//! Scripts are compiled once and their ASTs reused for every call. Every
//! script failure — a thrown error, a limit hit, a wall-clock overrun — comes
//! back as a [`ScriptError`] value; nothing a script does can panic the host.
//! This module does not know about sessions or the Command API: it returns
//! the raw [`Dynamic`] a callback produced and leaves meaning to its callers.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Position, Scope};
use serde::Deserialize;
use tracing::{debug, info};

/// Per-call sandbox limits, from `[limits]` in `project.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Rhai operations one callback may run (a loop iteration is a few).
    pub max_operations: u64,
    /// Nesting of function calls (guards against runaway recursion).
    pub max_call_levels: usize,
    /// Bytes in any one string.
    pub max_string_size: usize,
    /// Items in any one array.
    pub max_array_size: usize,
    /// Entries in any one map.
    pub max_map_size: usize,
    /// Wall-clock time one callback may run, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Generous for UI glue (thousands of loop iterations, megabyte
        // strings) yet small enough that a runaway handler is stopped well
        // before a user gives up on the tap.
        Limits {
            max_operations: 5_000_000,
            max_call_levels: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            timeout_ms: 2_000,
        }
    }
}

/// One source file handed to [`ScriptHost::compile`].
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Name used in errors and logs, e.g. `events/10-lights.rhai`.
    pub name: String,
    pub text: String,
}

/// A compile error with its place in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a callback did not return a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptErrorKind {
    /// The script threw or hit a runtime error (bad type, missing function…).
    Runtime,
    /// The operations limit stopped it.
    TooManyOperations,
    /// The wall-clock limit stopped it.
    Timeout,
    /// Another sandbox limit stopped it (call depth, string/array/map size).
    ResourceLimit,
}

/// A callback that failed, with where it failed.
///
/// Limit stops have no line: Rhai resets the position of such errors to the
/// call site when they leave a function, so only the script and the
/// callback are known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{script}{}: {callback}: {message}", place(*.line, *.column))]
pub struct ScriptError {
    pub kind: ScriptErrorKind,
    pub script: String,
    pub callback: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

struct Script {
    name: String,
    ast: AST,
    /// `name/arity` of every function the script defines.
    callbacks: HashSet<String>,
}

/// A project's engine and compiled scripts.
pub struct ScriptHost {
    engine: Engine,
    scripts: Vec<Script>,
    timeout: Duration,
}

mod analysis;
mod pool;

pub use pool::PoolError;

/// Runs `job` on the script threads and waits for it without blocking the
/// caller's async worker (see [`pool`]).
pub async fn run_off_async<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PoolError> {
    pool::run(job).await
}

thread_local! {
    // The wall-clock deadline of the callback running on this thread. The
    // engine's progress hook is shared by all threads, so per-call state has
    // to live here rather than in the hook's closure.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Markers the progress hook terminates a script with, to tell the limits
/// apart.
const TIMEOUT_TOKEN: &str = "wall-clock limit";
const OPERATIONS_TOKEN: &str = "operations limit";

/// Checking the clock on every operation would cost more than the operation;
/// every 256th keeps the overrun to microseconds.
const CLOCK_CHECK_MASK: u64 = 0xFF;

/// Operations before a callback may be demoted for running long: time
/// alone would also catch a handler that spent it in a host function, like
/// a `uiSet` to thousands of sessions, which must keep its priority.
const DEMOTE_MIN_OPERATIONS: u64 = 4096;

/// A compiled project's scripts and what the static checks found.
pub struct Compiled {
    pub host: ScriptHost,
    /// Findings that do not stop the project (unknown answer keys).
    pub warnings: Vec<CompileError>,
}

impl ScriptHost {
    /// Builds the sandboxed engine and compiles every file, in the order
    /// given. Returns every compile error, not just the first.
    pub fn compile(
        project: &str,
        files: Vec<SourceFile>,
        limits: &Limits,
        register: impl FnOnce(&mut Engine),
    ) -> Result<ScriptHost, Vec<CompileError>> {
        Self::compile_project(project, Vec::new(), files, limits, register).map(|c| c.host)
    }

    /// Compiles the project's `lib/` modules (`lib/<name>.rhai`, each
    /// evaluated once and callable as `<name>::function(…)` from every
    /// script), then its event scripts, then checks every call and `import`
    /// against what is defined ([`analysis`]). Returns every error.
    pub fn compile_project(
        project: &str,
        lib: Vec<SourceFile>,
        files: Vec<SourceFile>,
        limits: &Limits,
        register: impl FnOnce(&mut Engine),
    ) -> Result<Compiled, Vec<CompileError>> {
        let mut engine = sandboxed_engine(project, limits);
        register(&mut engine);
        let mut errors = Vec::new();
        let modules = compile_modules(&mut engine, lib, &mut errors);
        let mut scripts = Vec::with_capacity(files.len());
        for file in files {
            match compile_one(&engine, file) {
                Ok(script) => scripts.push(script),
                Err(error) => errors.push(error),
            }
        }
        let callable = analysis::Callable::new(&engine, modules.exports);
        let mut warnings = Vec::new();
        let asts = (modules.asts.iter().map(|(name, ast)| (name, ast)))
            .chain(scripts.iter().map(|s| (&s.name, &s.ast)));
        for (name, ast) in asts {
            let report = analysis::check_file(ast, &callable, crate::answer::ANSWER_KEYS);
            let place = |finding: analysis::Finding| CompileError {
                file: name.clone(),
                line: finding.line,
                column: finding.column,
                message: finding.message,
            };
            errors.extend(report.errors.into_iter().map(place));
            warnings.extend(report.warnings.into_iter().map(place));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Compiled {
            host: ScriptHost {
                engine,
                scripts,
                timeout: Duration::from_millis(limits.timeout_ms),
            },
            warnings,
        })
    }

    /// Whether any script defines `callback` with `arity` parameters.
    pub fn defines(&self, callback: &str, arity: usize) -> bool {
        let key = callback_key(callback, arity);
        self.scripts.iter().any(|s| s.callbacks.contains(&key))
    }

    /// Calls `callback` in each script that defines it, in file order, and
    /// returns the first answer that is not `()` (HSYCO's plugin chain).
    /// `Ok(None)`: no script answered. A failing script stops the chain.
    pub fn call_first(
        &self,
        callback: &str,
        args: Vec<Dynamic>,
    ) -> Result<Option<Dynamic>, ScriptError> {
        Ok(self
            .call_first_from(callback, args)?
            .map(|(answer, _)| answer))
    }

    /// [`ScriptHost::call_first`], also naming the script that answered
    /// (e.g. `events/10-main.rhai`).
    pub fn call_first_from(
        &self,
        callback: &str,
        args: Vec<Dynamic>,
    ) -> Result<Option<(Dynamic, &str)>, ScriptError> {
        let key = callback_key(callback, args.len());
        for script in self.scripts.iter().filter(|s| s.callbacks.contains(&key)) {
            let answer = self.call(script, callback, args.clone())?;
            if !answer.is_unit() {
                return Ok(Some((answer, script.name.as_str())));
            }
        }
        Ok(None)
    }

    /// The scripts that define `callback` with `arity` parameters, in the
    /// order they are asked.
    pub fn scripts_defining(&self, callback: &str, arity: usize) -> Vec<&str> {
        let key = callback_key(callback, arity);
        self.scripts
            .iter()
            .filter(|s| s.callbacks.contains(&key))
            .map(|s| s.name.as_str())
            .collect()
    }

    /// The line where `script` defines `callback` (0 when unknown).
    pub fn callback_line(&self, script: &str, callback: &str, arity: usize) -> usize {
        self.scripts
            .iter()
            .find(|s| s.name == script)
            .and_then(|s| {
                s.ast
                    .shared_lib()
                    .iter_script_fn_info()
                    .find(|(_, _, name, params, _)| *name == callback && *params == arity)
                    .and_then(|(.., definition)| definition.body.start_position().line())
            })
            .unwrap_or(0)
    }

    fn call(
        &self,
        script: &Script,
        callback: &str,
        args: Vec<Dynamic>,
    ) -> Result<Dynamic, ScriptError> {
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let mut scope = Scope::new();
        // `timeout_ms = 0` means no wall-clock limit, as `max_operations = 0`
        // means no operations limit.
        DEADLINE.set((!self.timeout.is_zero()).then(|| Instant::now() + self.timeout));
        let result = self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut scope,
            &script.ast,
            callback,
            args,
        );
        DEADLINE.set(None);
        result.map_err(|error| script_error(&script.name, callback, *error))
    }
}

fn sandboxed_engine(project: &str, limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    // No `import` of files: a project's scripts are exactly the files in its
    // `events/` and `lib/` folders, and `lib/` modules are registered by
    // name ([`compile_modules`]), not imported.
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    // And `import` is not even a keyword: refused when the script compiles,
    // wherever it is written. Left to the resolver, an `import` in a
    // `switch` arm compiled and its call returned success.
    engine.disable_symbol("import");
    engine.disable_symbol("eval");
    // Undeclared variables are compile errors, reported with file:line:col,
    // instead of surprises at run time.
    engine.set_strict_variables(true);
    // The operations limit is enforced in the progress hook rather than by
    // `set_max_operations`: a termination from the hook carries the script
    // position, the built-in limit error does not.
    engine.set_max_call_levels(limits.max_call_levels);
    // Rhai's defaults differ between debug and release builds (16 vs 32 in
    // functions); a project must compile the same under both.
    engine.set_max_expr_depths(64, 64);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    let max_operations = limits.max_operations;
    engine.on_progress(move |operations| {
        if max_operations > 0 && operations > max_operations {
            return Some(OPERATIONS_TOKEN.into());
        }
        if operations & CLOCK_CHECK_MASK != 0 {
            return None;
        }
        match DEADLINE.get() {
            Some(deadline) if Instant::now() >= deadline => Some(TIMEOUT_TOKEN.into()),
            _ => {
                // A handler busy with many operations is looping: let it
                // have only the CPU time nobody else wants.
                if operations >= DEMOTE_MIN_OPERATIONS {
                    pool::demote_if_running_long();
                }
                None
            }
        }
    });
    let print_project = project.to_string();
    engine.on_print(
        move |text| info!(target: "switchboard::script", project = %print_project, "{text}"),
    );
    register_logging(&mut engine, project);
    let debug_project = project.to_string();
    engine.on_debug(move |text, source, position| {
        debug!(target: "switchboard::script", project = %debug_project,
            "{}:{}: {text}", source.unwrap_or("?"), position_text(position))
    });
    engine
}

/// The `lib/` modules once compiled and registered.
#[derive(Default)]
struct Modules {
    /// File name and AST of each module, for the static checks.
    asts: Vec<(String, AST)>,
    /// Module name → `name/arity` of its public functions.
    exports: BTreeMap<String, HashSet<String>>,
}

/// Compiles and evaluates each module once and registers it on the engine
/// under its file name: `lights::label(…)` in any script. Nothing is
/// imported (`import` is disabled), so no script can reach another file.
fn compile_modules(
    engine: &mut Engine,
    lib: Vec<SourceFile>,
    errors: &mut Vec<CompileError>,
) -> Modules {
    let mut modules = Modules::default();
    for file in lib {
        let Some(module_name) = module_name(&file.name) else {
            errors.push(CompileError {
                file: file.name.clone(),
                line: 0,
                column: 0,
                message: "a lib/ module's file name must be an identifier (letters, digits, `_`), e.g. lib/lights.rhai".into(),
            });
            continue;
        };
        let script = match compile_one(engine, file) {
            Ok(script) => script,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        // Top-level statements of a module run here, once, under the
        // sandbox limits (no wall-clock deadline is set outside a callback).
        let module = match rhai::Module::eval_ast_as_new(Scope::new(), &script.ast, engine) {
            Ok(module) => module,
            Err(error) => {
                let error = script_error(&script.name, "(module)", *error);
                errors.push(CompileError {
                    file: script.name.clone(),
                    line: error.line,
                    column: error.column,
                    message: error.message,
                });
                continue;
            }
        };
        let exports = script
            .ast
            .iter_functions()
            .filter(|f| f.access == rhai::FnAccess::Public)
            .map(|f| analysis::function_key(f.name, f.params.len()))
            .collect();
        engine.register_static_module(module_name.as_str(), module.into());
        modules.exports.insert(module_name, exports);
        modules.asts.push((script.name, script.ast));
    }
    modules
}

/// `lib/lights.rhai` → `lights`, when the stem is a Rhai identifier.
fn module_name(file: &str) -> Option<String> {
    let stem = std::path::Path::new(file).file_stem()?.to_str()?;
    rhai::is_valid_identifier(stem).then(|| stem.to_string())
}

/// The log levels `log(level, text)` accepts.
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug"];

/// `log_warn(text)`, `log_error(text)` and `log(level, text)`: a log line
/// tagged with the project and the caller's `file:line:col`, like `debug`.
fn register_logging(engine: &mut Engine, project: &str) {
    for (name, level) in [("log_warn", "warn"), ("log_error", "error")] {
        let project = project.to_string();
        engine.register_fn(
            name,
            move |context: rhai::NativeCallContext, text: Dynamic| {
                write_log(&project, level, &context, &text);
            },
        );
    }
    let project = project.to_string();
    engine.register_fn(
        "log",
        move |context: rhai::NativeCallContext,
              level: &str,
              text: Dynamic|
              -> Result<(), Box<EvalAltResult>> {
            if !LOG_LEVELS.contains(&level) {
                return Err(format!(
                    "log: unknown level `{level}`; use one of {}",
                    LOG_LEVELS.join(", ")
                )
                .into());
            }
            write_log(&project, level, &context, &text);
            Ok(())
        },
    );
}

fn write_log(project: &str, level: &str, context: &rhai::NativeCallContext, text: &Dynamic) {
    let place = format!(
        "{}:{}",
        context.call_source().unwrap_or("?"),
        position_text(context.call_position())
    );
    let text = text.to_string();
    match level {
        "error" => {
            tracing::error!(target: "switchboard::script", project = %project, "{place}: {text}")
        }
        "warn" => {
            tracing::warn!(target: "switchboard::script", project = %project, "{place}: {text}")
        }
        "info" => info!(target: "switchboard::script", project = %project, "{place}: {text}"),
        _ => debug!(target: "switchboard::script", project = %project, "{place}: {text}"),
    }
}

fn compile_one(engine: &Engine, file: SourceFile) -> Result<Script, CompileError> {
    let mut ast = engine.compile(&file.text).map_err(|error| CompileError {
        file: file.name.clone(),
        line: error.1.line().unwrap_or(0),
        column: error.1.position().unwrap_or(0),
        message: error.0.to_string(),
    })?;
    ast.set_source(file.name.as_str());
    let callbacks = ast
        .iter_functions()
        .map(|function| callback_key(function.name, function.params.len()))
        .collect();
    Ok(Script {
        name: file.name,
        ast,
        callbacks,
    })
}

fn place(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

fn callback_key(name: &str, arity: usize) -> String {
    format!("{name}/{arity}")
}

fn position_text(position: Position) -> String {
    match (position.line(), position.position()) {
        (Some(line), Some(column)) => format!("{line}:{column}"),
        (Some(line), None) => line.to_string(),
        _ => "?".into(),
    }
}

/// Flattens Rhai's error (errors inside nested function calls arrive wrapped)
/// into the innermost cause and its position.
fn script_error(script: &str, callback: &str, error: EvalAltResult) -> ScriptError {
    let mut error = error;
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
    | EvalAltResult::ErrorInModule(_, inner, _) = error
    {
        error = *inner;
    }
    let position = error.position();
    let kind = match &error {
        EvalAltResult::ErrorTooManyOperations(_) => ScriptErrorKind::TooManyOperations,
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == OPERATIONS_TOKEN => {
            ScriptErrorKind::TooManyOperations
        }
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == TIMEOUT_TOKEN => {
            ScriptErrorKind::Timeout
        }
        EvalAltResult::ErrorStackOverflow(_)
        | EvalAltResult::ErrorDataTooLarge(..)
        | EvalAltResult::ErrorTooManyVariables(_)
        | EvalAltResult::ErrorTooManyModules(_) => ScriptErrorKind::ResourceLimit,
        _ => ScriptErrorKind::Runtime,
    };
    let message = match kind {
        ScriptErrorKind::Timeout => "stopped by the wall-clock limit".to_string(),
        ScriptErrorKind::TooManyOperations => "stopped by the operations limit".to_string(),
        _ => error.to_string(),
    };
    ScriptError {
        kind,
        script: script.to_string(),
        callback: callback.to_string(),
        line: position.line().unwrap_or(0),
        column: position.position().unwrap_or(0),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str, limits: Limits) -> ScriptHost {
        let files = vec![SourceFile {
            name: "events/test.rhai".into(),
            text: text.into(),
        }];
        ScriptHost::compile("test", files, &limits, |_| {}).expect("compiles")
    }

    fn args(values: &[&str]) -> Vec<Dynamic> {
        values
            .iter()
            .map(|v| Dynamic::from(v.to_string()))
            .collect()
    }

    #[test]
    fn calls_the_handler_with_four_strings() {
        let host = host(
            r#"fn userCommand(session, userid, name, param) { `${name}=${param}` }"#,
            Limits::default(),
        );
        let answer = host
            .call_first("userCommand", args(&["s", "", "light", "on"]))
            .unwrap();
        assert_eq!(answer.unwrap().into_string().unwrap(), "light=on");
    }

    #[test]
    fn first_script_with_an_answer_wins() {
        let files = vec![
            SourceFile {
                name: "events/a.rhai".into(),
                text: r#"fn userCommand(s, u, n, p) { if n == "a" { "from a" } }"#.into(),
            },
            SourceFile {
                name: "events/b.rhai".into(),
                text: r#"fn userCommand(s, u, n, p) { "from b" }"#.into(),
            },
        ];
        let host = ScriptHost::compile("t", files, &Limits::default(), |_| {}).unwrap();
        let call = |name: &str| {
            host.call_first("userCommand", args(&["s", "", name, ""]))
                .unwrap()
                .unwrap()
                .into_string()
                .unwrap()
        };
        assert_eq!(call("a"), "from a");
        assert_eq!(call("x"), "from b");
    }

    #[test]
    fn no_answer_is_none() {
        let host = host("fn userCommand(s, u, n, p) { }", Limits::default());
        assert_eq!(
            host.call_first("userCommand", args(&["s", "", "n", ""]))
                .unwrap()
                .map(|d| d.type_name()),
            None
        );
        assert!(host.call_first("missing", vec![]).unwrap().is_none());
    }

    #[test]
    fn compile_errors_name_file_line_and_column() {
        let files = vec![SourceFile {
            name: "events/bad.rhai".into(),
            text: "fn userCommand(s, u, n, p) {\n  let x = ;\n}".into(),
        }];
        let errors = ScriptHost::compile("t", files, &Limits::default(), |_| {})
            .err()
            .unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].file.as_str(), errors[0].line),
            ("events/bad.rhai", 2)
        );
        assert!(errors[0].column > 0);
    }

    #[test]
    fn undeclared_variables_fail_at_compile_time() {
        let files = vec![SourceFile {
            name: "e.rhai".into(),
            text: "fn f() { nope + 1 }".into(),
        }];
        assert!(ScriptHost::compile("t", files, &Limits::default(), |_| {}).is_err());
    }

    #[test]
    fn eval_and_import_are_refused() {
        let files = vec![SourceFile {
            name: "e.rhai".into(),
            text: r#"fn f() { eval("1") }"#.into(),
        }];
        assert!(ScriptHost::compile("t", files, &Limits::default(), |_| {}).is_err());
    }

    #[test]
    fn lib_modules_are_shared_and_calls_are_checked() {
        let lib = vec![SourceFile {
            name: "lib/util.rhai".into(),
            text: "fn twice(x) { x * 2 }".into(),
        }];
        let files = vec![SourceFile {
            name: "events/a.rhai".into(),
            text: "fn f() { util::twice(21) }\nfn g() { missing(1) }".into(),
        }];
        let errors =
            ScriptHost::compile_project("t", lib.clone(), files, &Limits::default(), |_| {})
                .err()
                .unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].column), (2, 10));
        let files = vec![SourceFile {
            name: "events/a.rhai".into(),
            text: "fn f() { util::twice(21) }\nfn userCommand(s, u, n, p) { #{ tost: 1 } }\nfn userDownload(s, u, n, p) { #{ filename: \"x\" } }".into(),
        }];
        let compiled = ScriptHost::compile_project("t", lib, files, &Limits::default(), |_| {})
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            compiled
                .host
                .call_first("f", vec![])
                .unwrap()
                .unwrap()
                .as_int(),
            Ok(42)
        );
        assert_eq!(compiled.warnings.len(), 1, "{:?}", compiled.warnings);
        assert!(compiled.warnings[0].message.contains("`tost`"));
    }

    /// Issue 12: an `import` inside a `switch` arm compiled and the call
    /// returned success.
    #[test]
    fn an_import_inside_a_switch_arm_is_refused() {
        for text in [
            r#"fn f(x) { switch x { 1 => { import "secrets" as s; 2 }, _ => 3 } }"#,
            r#"fn f(x) { import "secrets" as s; x }"#,
            r#"import "secrets" as s; fn f(x) { x }"#,
        ] {
            let files = vec![SourceFile {
                name: "e.rhai".into(),
                text: text.into(),
            }];
            assert!(
                ScriptHost::compile("t", files, &Limits::default(), |_| {}).is_err(),
                "compiled: {text}"
            );
        }
    }

    #[test]
    fn an_infinite_loop_hits_the_operations_limit() {
        let limits = Limits {
            max_operations: 10_000,
            ..Limits::default()
        };
        let error = host("fn f() {\n  let x = 0;\n  loop { x += 1; }\n}", limits)
            .call_first("f", vec![])
            .unwrap_err();
        assert_eq!(error.kind, ScriptErrorKind::TooManyOperations);
        assert_eq!(
            error.to_string(),
            "events/test.rhai: f: stopped by the operations limit"
        );
    }

    #[test]
    fn an_infinite_loop_hits_the_clock() {
        let limits = Limits {
            max_operations: 0,
            timeout_ms: 50,
            ..Limits::default()
        };
        let error = host("fn f() { let x = 0; loop { x += 1; } }", limits)
            .call_first("f", vec![])
            .unwrap_err();
        assert_eq!(error.kind, ScriptErrorKind::Timeout);
    }

    #[test]
    fn runaway_recursion_and_huge_strings_are_stopped() {
        let limits = Limits {
            max_call_levels: 16,
            max_string_size: 1000,
            ..Limits::default()
        };
        let host = host(
            "fn r(n) { r(n + 1) }\nfn s() { let x = \"a\"; loop { x += x; } }",
            limits,
        );
        assert_eq!(
            host.call_first("r", vec![Dynamic::from(0_i64)])
                .unwrap_err()
                .kind,
            ScriptErrorKind::ResourceLimit
        );
        assert_eq!(
            host.call_first("s", vec![]).unwrap_err().kind,
            ScriptErrorKind::ResourceLimit
        );
    }

    #[test]
    fn thrown_errors_carry_the_inner_position() {
        let host = host(
            "fn helper() {\n  throw \"boom\";\n}\nfn f() { helper() }",
            Limits::default(),
        );
        let error = host.call_first("f", vec![]).unwrap_err();
        assert_eq!(error.kind, ScriptErrorKind::Runtime);
        assert_eq!(error.line, 2);
        assert!(error.message.contains("boom"), "{}", error.message);
    }
}
