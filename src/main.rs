//! The `hone` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    // candle runs element-wise ops on its own spin-waiting thread pool, beside the rayon pool that
    // its matmul (gemm) and hone's fused kernels use. On a small or busy CPU the two pools fight
    // for the cores and the spinning costs more than the parallelism gains (measured in
    // ARCHITECTURE.md, "Performance"), so element-wise ops run on the calling thread unless
    // CANDLE_NUM_THREADS says otherwise. Element-wise ops have no reductions: results do not
    // depend on this setting. Set here, before any thread exists. It has to be the environment
    // variable: candle-core (0.11, `utils::candle_num_threads`) reads only `CANDLE_NUM_THREADS`
    // to size that pool and offers no call to set it.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    hone::cli::main()
}
