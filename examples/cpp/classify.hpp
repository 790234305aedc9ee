// What both classifiers share: the sidecar (MODEL.json), the command line, batching, softmax + top-5 as JSON lines,
// --dump-input and --bench. Each program only loads its runtime and says how to run one batch (an Infer).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "preprocess.hpp"

namespace vitzoo {

// The sidecar `vitzoo export` writes beside the model file (vitzoo.artifacts.card).
struct Sidecar {
    std::string runtime, precision;
    std::vector<std::string> classes;  // names in output order
    int batch = -1;                    // the one batch the file takes, or -1 for any
    int size = 0;                      // input is [batch, 3, size, size] float32 NCHW
    Preprocessing preprocessing;

    static Sidecar read(const std::string& model_path, const std::string& runtime) {
        const std::string path = model_path + ".json";
        std::ifstream f(path);
        if (!f) throw std::runtime_error(path + ": missing (vitzoo export writes it beside the model)");
        try {
            return from_json(nlohmann::json::parse(f), runtime);
        } catch (const std::exception& e) {  // a missing key or a wrong type, as nlohmann words it
            throw std::runtime_error(path + ": " + e.what());
        }
    }

    static Sidecar from_json(const nlohmann::json& j, const std::string& runtime) {
        if (j.value("format", "") != "vitzoo-artifact" || j.value("version", 0) != 1)
            throw std::runtime_error("not a version 1 vitzoo artifact description");
        Sidecar s;
        s.runtime = j.at("runtime").get<std::string>();
        if (s.runtime != runtime)
            throw std::runtime_error("describes a \"" + s.runtime + "\" file, not \"" + runtime + "\"");
        s.precision = j.at("precision").get<std::string>();
        s.classes = j.at("classes").get<std::vector<std::string>>();
        if (s.classes.empty()) throw std::runtime_error("no class names");
        auto shape = j.at("input").at("shape").get<std::vector<int>>();
        if (shape.size() != 4 || shape[1] != 3 || shape[2] != shape[3] || shape[2] <= 0)
            throw std::runtime_error("input shape is not [batch, 3, size, size]");
        s.batch = shape[0];
        s.size = shape[2];
        s.preprocessing = Preprocessing::from_json(j.at("preprocessing"));
        if (s.preprocessing.crop != s.size) throw std::runtime_error("the crop is not the input size");
        return s;
    }
    size_t image_floats() const { return size_t(3) * size * size; }
};

struct Options {
    std::string model, dump_input;
    std::vector<std::string> images;
    int bench = 0, threads = 0;  // threads 0: the runtime's own choice
    int bench_batch = 0;          // 0: batch 1 and 8 (or the file's own batch)
};

// Runs the model on n images (n * image_floats() floats), writing n * classes logits.
using Infer = std::function<void(const float* images, int n, float* logits)>;
using Loader = std::function<Infer(const Sidecar&, const Options&)>;

inline void print_top(const std::string& image, const float* logits, const std::vector<std::string>& classes) {
    // softmax in float, the maximum subtracted first as torch does
    const int c = int(classes.size());
    const float peak = *std::max_element(logits, logits + c);
    std::vector<float> p(c);
    float sum = 0.0f;
    for (int i = 0; i < c; ++i) sum += p[i] = std::exp(logits[i] - peak);
    for (float& v : p) v /= sum;
    std::vector<int> order(c);
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min(5, c);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return p[a] > p[b]; });
    nlohmann::json top = nlohmann::json::array();
    for (int i = 0; i < k; ++i)
        top.push_back({{"index", order[i]}, {"label", classes[order[i]]}, {"probability", p[order[i]]}});
    // a file name that is not UTF-8 is printed with U+FFFD in place of its odd bytes, not refused
    std::cout << nlohmann::json{{"image", image}, {"top", top}}.dump(-1, ' ', false,
                                                                     nlohmann::json::error_handler_t::replace)
              << std::endl;
}

// --bench: N timed calls per batch size (after warm-up), the model alone, on copies of the first image.
inline void bench(const Sidecar& s, const Options& o, const Infer& infer, const std::vector<float>& first) {
    std::vector<int> batches = s.batch > 0 ? std::vector<int>{s.batch} : std::vector<int>{1, 8};
    if (o.bench_batch > 0) {
        if (s.batch > 0 && o.bench_batch != s.batch)
            throw std::runtime_error("the file takes batch " + std::to_string(s.batch) + " only");
        batches = {o.bench_batch};
    }
    for (int b : batches) {
        std::vector<float> x(b * s.image_floats()), y(b * s.classes.size());
        for (int i = 0; i < b; ++i) std::copy(first.begin(), first.end(), x.begin() + i * s.image_floats());
        for (int i = 0; i < std::max(3, o.bench / 10); ++i) infer(x.data(), b, y.data());  // warm-up: compile, caches
        std::vector<double> ms;
        for (int i = 0; i < o.bench; ++i) {
            auto start = std::chrono::steady_clock::now();
            infer(x.data(), b, y.data());
            ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        }
        std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
        std::cout << nlohmann::json{{"runtime", s.runtime}, {"batch", b}, {"calls", o.bench},
                                    {"ms_median", ms[ms.size() / 2]}}.dump() << std::endl;
    }
}

inline Options parse(int argc, char** argv) {
    Options o;
    std::vector<std::string> args(argv + 1, argv + argc);
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& arg = args[i];
        auto value = [&]() {
            if (i + 1 >= args.size()) throw std::invalid_argument(arg + " needs a value");
            return args[++i];
        };
        auto count = [&]() {
            const std::string v = value();
            if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 9)
                throw std::invalid_argument(arg + " needs a whole number, not \"" + v + "\"");
            return std::stoi(v);
        };
        if (arg == "--bench") o.bench = count();
        else if (arg == "--bench-batch") o.bench_batch = count();
        else if (arg == "--threads") o.threads = count();
        else if (arg == "--dump-input") o.dump_input = value();
        else if (arg == "-h" || arg == "--help") throw std::invalid_argument("");
        else if (arg.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + arg);
        else if (o.model.empty()) o.model = arg;
        else o.images.push_back(arg);
    }
    if (o.model.empty() || (o.images.empty() && o.bench <= 0)) throw std::invalid_argument("");
    if (!o.dump_input.empty() && o.images.empty()) throw std::invalid_argument("--dump-input needs images");
    return o;
}

// The whole program: options, sidecar, preprocessing; --dump-input writes the input tensor [N, 3, H, W] as raw
// float32 and stops before any model is loaded; otherwise one JSON line per image, then --bench's lines.
inline int run_classifier(int argc, char** argv, const std::string& runtime, const std::string& usage,
                          const Loader& load) {
    Options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        if (*e.what()) std::cerr << "error: " << e.what() << "\n";
        std::cerr << "usage: " << argv[0] << " " << usage
                  << " IMAGE... [--threads T] [--bench N [--bench-batch B]] [--dump-input FILE]\n";
        return 2;
    }
    try {
        const Sidecar s = Sidecar::read(o.model, runtime);
        const size_t floats = s.image_floats(), classes = s.classes.size();
        std::ofstream dump;
        Infer infer;
        if (!o.dump_input.empty()) {
            dump.open(o.dump_input, std::ios::binary);
            if (!dump) throw std::runtime_error(o.dump_input + ": cannot write");
        } else {
            infer = load(s, o);
        }
        // batches of at most 8 (a dynamic batch) or of the file's own batch, the last one padded with zeros;
        // images are read a batch at a time, so a long list takes no more memory than a short one
        const int chunk = s.batch > 0 ? s.batch : 8;
        std::vector<float> first(floats, 0.0f);  // what --bench runs on
        for (size_t start = 0; start < o.images.size(); start += chunk) {
            const int n = int(std::min<size_t>(chunk, o.images.size() - start));
            const int run = s.batch > 0 ? s.batch : n;
            std::vector<float> x(run * floats, 0.0f), logits(run * classes);
            for (int i = 0; i < n; ++i)
                preprocess(decode_rgb(o.images[start + i], s.preprocessing), s.preprocessing, x.data() + i * floats);
            if (start == 0) std::copy_n(x.begin(), floats, first.begin());
            if (dump.is_open()) {
                dump.write(reinterpret_cast<const char*>(x.data()), std::streamsize(n * floats * sizeof(float)));
                continue;
            }
            infer(x.data(), run, logits.data());
            for (int i = 0; i < n; ++i) print_top(o.images[start + i], logits.data() + i * classes, s.classes);
        }
        if (dump.is_open()) {
            dump.close();
            if (!dump) throw std::runtime_error(o.dump_input + ": write failed");
            return 0;
        }
        if (o.bench > 0) bench(s, o, infer, first);
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}

}  // namespace vitzoo
