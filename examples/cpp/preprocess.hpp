// vitzoo's eval preprocessing (Python: vitzoo.data.transforms.EvalTransform) in C++, to the bit:
// decode -> resize the short side -> center crop -> (v * float(1/255) - mean) / std -> CHW float32.
// The sidecar's "preprocessing" record says which variant; Preprocessing::from_json reads it.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace vitzoo {

struct Preprocessing {
    int resize_short = 0, crop = 0;
    std::string interpolation;  // "cv2_bilinear" | "pil_bicubic"
    std::string decoder;        // "cv2" | "pil"
    std::string rounding;       // "paddle" | "torchvision"
    std::array<float, 3> mean{}, std{};  // float32, as Python's lookup table casts them

    static Preprocessing from_json(const nlohmann::json& j) {
        Preprocessing p;
        p.resize_short = j.at("resize_short").get<int>();
        p.crop = j.at("crop").get<int>();
        p.interpolation = j.at("interpolation").get<std::string>();
        p.decoder = j.value("decoder", std::string("cv2"));
        p.rounding = j.value("rounding", std::string("paddle"));
        for (int c = 0; c < 3; ++c) {
            p.mean[c] = static_cast<float>(j.at("mean").at(c).get<double>());
            p.std[c] = static_cast<float>(j.at("std").at(c).get<double>());
        }
        auto one_of = [](const std::string& v, const char* a, const char* b, const char* what) {
            if (v != a && v != b) throw std::runtime_error(std::string("unknown ") + what + " \"" + v + "\"");
        };
        one_of(p.interpolation, "cv2_bilinear", "pil_bicubic", "interpolation");
        one_of(p.decoder, "cv2", "pil", "decoder");
        one_of(p.rounding, "paddle", "torchvision", "rounding");
        if (p.crop <= 0 || p.resize_short < p.crop) throw std::runtime_error("bad resize_short/crop");
        return p;
    }

    // The resized (width, height). std::nearbyint rounds half to even, as Python's round() does.
    std::pair<int, int> resized_size(int w, int h) const {
        if (rounding == "paddle") {
            double scale = double(resize_short) / std::min(w, h);
            return {int(std::nearbyint(w * scale)), int(std::nearbyint(h * scale))};
        }
        // torchvision: the short side exact, the long side truncated
        if (w <= h) return {resize_short, int(double(resize_short) * h / w)};
        return {int(double(resize_short) * w / h), resize_short};
    }
};

// Pillow's uint8 resampling (libImaging/Resample.c, ImagingResample) with its BICUBIC filter: separable, a
// horizontal pass then a vertical one, each with coefficients normalized to sum 1, then turned into fixed point;
// every pass rounds and clips to uint8. Reimplemented so a C++ program gets the very pixels Pillow gives.
namespace pillow {

constexpr int PRECISION_BITS = 32 - 8 - 2;

inline double bicubic(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Coefficients {
    int ksize = 0;
    std::vector<int> first, count;  // per output pixel: first input pixel, how many
    std::vector<int32_t> k;          // per output pixel: ksize fixed-point weights
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc, same operations in the same order (the float rounding of
// each step decides ties, so the order matters).
inline Coefficients coefficients(int in_size, int out_size) {
    constexpr double support_1x = 2.0;  // bicubic's support at scale 1
    double scale = double(in_size) / out_size;
    double filterscale = std::max(scale, 1.0);  // downscaling widens the filter (antialiasing)
    double support = support_1x * filterscale;
    Coefficients c;
    c.ksize = int(std::ceil(support)) * 2 + 1;
    c.first.resize(out_size);
    c.count.resize(out_size);
    c.k.assign(size_t(out_size) * c.ksize, 0);
    std::vector<double> w(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = (xx + 0.5) * scale;
        double ss = 1.0 / filterscale, ww = 0.0;
        int xmin = std::max(int(center - support + 0.5), 0);
        int xmax = std::min(int(center + support + 0.5), in_size) - xmin;
        for (int x = 0; x < xmax; ++x) {
            w[x] = bicubic((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        for (int x = 0; x < xmax; ++x) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            c.k[size_t(xx) * c.ksize + x] = int32_t(v < 0 ? -0.5 + v * (1 << PRECISION_BITS)
                                                         : 0.5 + v * (1 << PRECISION_BITS));
        }
        c.first[xx] = xmin;
        c.count[xx] = xmax;
    }
    return c;
}

// Accumulators start at one half (rounding) and are shifted back, clipped to 0..255.
inline uint8_t clip8(int64_t ss) { return uint8_t(std::clamp<int64_t>(ss >> PRECISION_BITS, 0, 255)); }

// One pass along the rows (horizontal) or the columns (vertical) of an interleaved uint8 image.
inline cv::Mat resample_pass(const cv::Mat& in, int out_size, bool horizontal) {
    const int channels = in.channels();
    const Coefficients c = coefficients(horizontal ? in.cols : in.rows, out_size);
    cv::Mat out(horizontal ? in.rows : out_size, horizontal ? out_size : in.cols, in.type());
    for (int y = 0; y < out.rows; ++y) {
        uint8_t* dst = out.ptr<uint8_t>(y);
        for (int x = 0; x < out.cols; ++x) {
            const int o = horizontal ? x : y;  // the output pixel along the resampled axis
            const int32_t* k = &c.k[size_t(o) * c.ksize];
            for (int ch = 0; ch < channels; ++ch) {
                int64_t ss = int64_t(1) << (PRECISION_BITS - 1);
                for (int i = 0; i < c.count[o]; ++i) {
                    const int src = c.first[o] + i;
                    const uint8_t v = horizontal ? in.ptr<uint8_t>(y)[src * channels + ch]
                                                 : in.ptr<uint8_t>(src)[x * channels + ch];
                    ss += int64_t(v) * k[i];
                }
                dst[x * channels + ch] = clip8(ss);
            }
        }
    }
    return out;
}

// Image.resize((width, height), Image.BICUBIC) of a uint8 image; an axis whose size stays is not resampled.
// The pass order changes the rounding, so it is Pillow's: horizontal first, except (since Pillow 13) where the
// height loses more than twice as many pixels as the width (Pillow 12 and older: always horizontal first; the two
// differ only for images over 2:1 tall, shrunk).
inline cv::Mat resize_bicubic(const cv::Mat& in, int width, int height) {
    const int lost_h = in.rows - height, lost_w = in.cols - width;
    const bool vertical_first = lost_h > 0 && lost_h > lost_w * 2;
    cv::Mat out = in;
    if (vertical_first && height != in.rows) out = resample_pass(out, height, false);
    if (width != in.cols) out = resample_pass(out, width, true);
    if (!vertical_first && height != in.rows) out = resample_pass(out, height, false);
    return out;
}

}  // namespace pillow

// The decoded image as RGB uint8: cv::imread then BGR -> RGB, as PaddleClas does. Pillow ("pil") ignores EXIF
// orientation, so OpenCV is told to as well; PNG decodes alike in both, JPEG decoders may differ by a level.
inline cv::Mat decode_rgb(const std::string& path, const Preprocessing& p) {
    int flags = cv::IMREAD_COLOR | (p.decoder == "pil" ? cv::IMREAD_IGNORE_ORIENTATION : 0);
    cv::Mat bgr = cv::imread(path, flags);
    if (bgr.empty()) throw std::runtime_error(path + ": not a decodable image");
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    return rgb;
}

// RGB uint8 pixels -> the normalized CHW float32 tensor written at `out` (3 * crop * crop floats).
inline void preprocess(const cv::Mat& rgb, const Preprocessing& p, float* out) {
    auto [w, h] = p.resized_size(rgb.cols, rgb.rows);
    // as vitzoo refuses: a thin strip's short side enlarged makes an enormous image
    const double limit = std::max(double(rgb.cols) * rgb.rows, 16e6);
    if (double(w) * h > limit) throw std::runtime_error("image resizes to over 16 megapixels");
    cv::Mat resized;
    if (p.interpolation == "cv2_bilinear")
        cv::resize(rgb, resized, cv::Size(w, h), 0, 0, cv::INTER_LINEAR);
    else
        resized = pillow::resize_bicubic(rgb, w, h);
    if (w < p.crop || h < p.crop) throw std::runtime_error("resized image smaller than the crop");
    int top = (h - p.crop) / 2, left = (w - p.crop) / 2;  // paddle: floor
    if (p.rounding == "torchvision") {
        top = int(std::nearbyint((h - p.crop) / 2.0));
        left = int(std::nearbyint((w - p.crop) / 2.0));
    }
    // every uint8 value's normalized float per channel: the same float32 operations as numpy's, done once
    float lut[3][256];
    const float inv255 = float(1.0 / 255.0);
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v) lut[c][v] = (float(v) * inv255 - p.mean[c]) / p.std[c];
    const size_t plane = size_t(p.crop) * p.crop;
    for (int y = 0; y < p.crop; ++y) {
        const uint8_t* row = resized.ptr<uint8_t>(top + y) + size_t(left) * 3;
        for (int x = 0; x < p.crop; ++x)
            for (int c = 0; c < 3; ++c) out[c * plane + size_t(y) * p.crop + x] = lut[c][row[x * 3 + c]];
    }
}

}  // namespace vitzoo
